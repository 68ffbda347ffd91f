"""``hf-egt`` command tests on a tiny random Llama, a tiny byte-level tokenizer and a tiny local json dataset."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import pytest
import torch

from tests import REPO_ROOT
from tests.conftest import GROUPS, run_accelerate_launch
from tests.integrations.test_hub import FakeHub


def _main(argv):
    from hf_egt.apps.cli import main

    return main([str(arg) for arg in argv])


# ------------------------------------------------------------------------------------------------------------- help
def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "train-diffusion", "evaluate", "demo"):
        assert command in out


@pytest.mark.parametrize(("command", "option"), [("evaluate", "--feature_model"), ("demo", "--quick")])
def test_command_help(capsys, command, option):
    with pytest.raises(SystemExit) as exit_info:
        _main([command, "--help"])
    assert exit_info.value.code == 0
    assert option in capsys.readouterr().out


def test_train_help_has_group_and_training_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--group_column", "--objective", "--lora_r", "--hyper", "--learning_rate", "--push_to_hub"):
        assert option in out


def test_evaluate_takes_the_dashed_spellings_and_its_help_shows_the_defaults(capsys):
    """Every `hf-egt evaluate` option also has the dashed spelling `hf-egt train` (HfArgumentParser) accepts, and
    `--help` shows each default that is not already in the text."""
    from hf_egt.apps.cli import command_parsers
    from hf_egt.apps.train import train_parser

    parser = command_parsers()["evaluate"]
    underscored = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and "_" in o]
    visible = [o for o in underscored if parser._option_string_actions[o].help != "==SUPPRESS=="]
    assert "--max_eval_per_group" in visible
    for option in visible:
        assert parser._option_string_actions[option.replace("_", "-")] is parser._option_string_actions[option]
    argv = ["--model-name-or-path", "m", "--dataset", "d", "--max-eval-per-group", "3", "--feature-model", "none"]
    args = parser.parse_args([*argv, "--per-device-eval-batch-size", "2", "--overwrite-output-dir"])
    assert (args.model_name_or_path, args.max_eval_per_group, args.feature_model) == ("m", 3, "none")
    assert args.per_device_eval_batch_size == 2 and args.overwrite_output_dir is True
    text = " ".join(parser.format_help().split())
    for default in ("(default: 100)", "(default: 42)", "(default: outputs/evaluate)", "(default: quantized_js)"):
        assert default in text
    assert "(default: None)" not in text and "(default: False)" not in text
    train_help = " ".join(train_parser().format_help().split())
    assert "A group of the data not listed is an error naming its rows" in train_help


def test_unknown_command_and_option_fail(capsys):
    with pytest.raises(SystemExit):
        _main(["fly"])
    with pytest.raises(SystemExit):
        _main(["demo", "--not_an_option", "1"])
    assert "--not_an_option" in capsys.readouterr().err


def test_train_diffusion_forwards_its_arguments(monkeypatch):
    received = {}
    module = types.ModuleType("hf_egt.apps.train_diffusion")
    module.parse_args = lambda argv: {"argv": list(argv)}
    module.main = lambda args: received.setdefault("args", args)
    monkeypatch.setitem(sys.modules, "hf_egt.apps.train_diffusion", module)
    _main(["train-diffusion", "--dataset", "digits", "--help-like", "x"])
    assert received["args"] == {"argv": ["--dataset", "digits", "--help-like", "x"]}


def test_redacted_command_hides_tokens():
    from hf_egt.apps.arguments import redacted_command

    command = redacted_command("hf-egt train", ["--hub_token", "hf_secret", "--x", "1", "--hub_token=hf_other"])
    assert "hf_secret" not in command and "hf_other" not in command
    assert command == "hf-egt train --hub_token '<redacted>' --x 1 '--hub_token=<redacted>'"


# ----------------------------------------------------------------------------------------------------- bad input
def _forbid_model_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the input is validated")

    monkeypatch.setattr("hf_egt.apps.checks.load_checked_causal_lm", fail)


def test_push_without_token_fails_before_anything(monkeypatch, tmp_path, tiny_lm, tiny_json):
    import huggingface_hub

    _forbid_model_loading(monkeypatch)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
    argv += ["--output_dir", tmp_path / "out", "--push_to_hub", "--hub_model_id", "me/x", "--report_to", "none"]
    with pytest.raises(ValueError, match="token"):
        _main(argv)
    assert not (tmp_path / "out" / "adapter_config.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--group_column", "sex"], r"`--group_column`: column 'sex' .* valid columns are \['text', 'gender', 'id'\]"),
        (["--group_column", "gender", "--text_column", "bio"], r"`--text_column`: column 'bio'"),
        (["--group_column", "gender", "--groups", "a", "c"], r"Group\(s\) \['c'\] have no rows .* \{'a': \d+, 'b'"),
    ],
)
def test_bad_columns_and_groups_fail_before_loading_the_model(
    monkeypatch, tmp_path, tiny_lm, tiny_json, extra, message
):
    _forbid_model_loading(monkeypatch)
    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--output_dir", tmp_path, *extra]
    with pytest.raises(ValueError, match=message):
        _main([*argv, "--report_to", "none"])


def test_unknown_datasets_list_the_valid_ones(tmp_path):
    from hf_egt.apps.data import load_grouped_dataset

    with pytest.raises(ValueError, match=r"bold-race.*bold-gender|bold-gender.*bold-race"):
        load_grouped_dataset("bold-astrology")
    with pytest.raises(ValueError, match=r"unknown dataset 'no-such-user/no-such-data'.*bold-race"):
        load_grouped_dataset("no-such-user/no-such-data")
    bad = tmp_path / "data.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '.txt'.*\.parquet"):
        load_grouped_dataset(str(bad))


def test_model_without_causal_lm_head_is_rejected(tmp_path):
    from transformers import DistilBertConfig, LlamaConfig

    from hf_egt.apps.checks import check_causal_lm

    encoder = tmp_path / "encoder"
    DistilBertConfig(vocab_size=10, dim=8, n_layers=1, n_heads=2, hidden_dim=16).save_pretrained(encoder)
    with pytest.raises(ValueError, match="'distilbert' model, which has no causal-LM head"):
        check_causal_lm(str(encoder))
    classifier = tmp_path / "classifier"
    config = LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    config.architectures = ["LlamaForSequenceClassification"]
    config.save_pretrained(classifier)
    with pytest.raises(ValueError, match=r"saved as \['LlamaForSequenceClassification'\].*LlamaForCausalLM"):
        check_causal_lm(str(classifier))


# ------------------------------------------------------------------------------------------------------------ data
def test_builtin_bold_race_splits_by_person():
    from hf_egt.apps.data import load_grouped_dataset

    train, evaluation, groups = load_grouped_dataset("bold-race", max_train_per_group=30, max_eval_per_group=10)
    assert groups == ["African_Americans", "Asian_Americans", "European_Americans", "Hispanic_and_Latino_Americans"]
    assert {g: train["group"].count(g) for g in groups} == dict.fromkeys(groups, 30)
    assert {g: evaluation["group"].count(g) for g in groups} == dict.fromkeys(groups, 10)
    train_people = set(zip(train["group"], train["person"]))
    assert train_people.isdisjoint(zip(evaluation["group"], evaluation["person"]))


def test_local_json_without_eval_split_holds_out_every_group(tiny_json):
    from hf_egt.apps.data import load_grouped_dataset

    train, evaluation, groups = load_grouped_dataset(str(tiny_json), group_column="gender", eval_fraction=0.25)
    assert groups == ["a", "b"]
    assert sorted(evaluation["gender"]) == ["a"] * 6 + ["b"] * 3
    assert set(train["id"]).isdisjoint(evaluation["id"]) and len(train) + len(evaluation) == 36


# ------------------------------------------------------------------------------------------------------ evaluation
def test_group_perplexity_matches_the_models_own_loss(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_egt.integrations.evaluation import group_perplexity, sequence_nll

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    texts = [GROUPS["a"].format(1), GROUPS["b"].format(22), "a cat", GROUPS["a"].format(333)]
    groups = ["a", "b", "b", "a"]
    nll, tokens = sequence_nll(model, tokenizer, texts, batch_size=3)
    result = group_perplexity(nll, tokens, groups)
    # reference: one text at a time through the model's own (mean) loss, then token-weighted per group
    sums = {"a": [0.0, 0], "b": [0.0, 0]}
    for text, group in zip(texts, groups):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        sums[group][0] += loss * (ids.shape[1] - 1)
        sums[group][1] += ids.shape[1] - 1
    for group, (total, count) in sums.items():
        assert result["per_group"][group] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert result["overall"] == pytest.approx(
        math.exp(sum(t for t, _ in sums.values()) / sum(c for _, c in sums.values())), rel=1e-4
    )


def test_sentence_prefixes():
    from hf_egt.integrations.evaluation import sentence_prefixes

    assert sentence_prefixes(["one two  three four five", "short"], num_words=3) == ["one two three", "short"]


def test_evaluate_command_writes_the_report(tmp_path, tiny_lm, tiny_json):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_egt.integrations.evaluation import evaluate_causal_lm

    out = tmp_path / "eval"
    argv = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
    result = _main([*argv, "--feature_model", "none", "--output_dir", out, "--max_eval_per_group", "4"])
    report = json.loads((out / "report.json").read_text())
    run = report["runs"]["base"]
    assert set(run["per_group"]) == {"a", "b"}
    assert run["gap"] == pytest.approx(max(run["per_group"].values()) - min(run["per_group"].values()))
    assert run["worst_group"] == max(run["per_group"], key=run["per_group"].get)
    assert (out / "report.png").stat().st_size > 1000
    assert "| a |" in (out / "report.md").read_text()
    # the command's numbers are those of the library call on the same rows
    from hf_egt.apps.data import load_grouped_dataset

    # (the command's defaults: seed 42 and max_length 512, as `hf-egt train`'s)
    _, evaluation, _ = load_grouped_dataset(str(tiny_json), group_column="gender", max_eval_per_group=4, seed=42)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_lm), AutoTokenizer.from_pretrained(tiny_lm)
    direct = evaluate_causal_lm(model, tokenizer, evaluation["text"], evaluation["gender"], max_length=512)
    assert result["runs"]["base"]["per_group"] == pytest.approx(direct["per_group"])


@pytest.mark.slow
def test_train_and_evaluate_report_the_same_overall_on_the_same_adapter_and_rows(tmp_path, tiny_lm, tiny_json):
    """One "overall" (token-pooled perplexity, as each group's value) in `hf-egt train` and `hf-egt evaluate`: train
    reported exp of the batch-mean eval loss (issue 22: 47549.81 vs 47625.85 for the same adapter and rows)."""
    out = tmp_path / "train"
    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
    argv += ["--lora_r", "2", "--lora_target_modules", "q_proj", "--max_steps", "2", "--learning_rate", "0.05"]
    argv += ["--per_device_eval_batch_size", "3", "--output_dir", out, "--report_to", "none", "--save_strategy", "no"]
    trained = _main(argv)["runs"]
    evaluated = _main(
        ["evaluate", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--adapter", out, "--eval_base"]
        + ["--feature_model", "none", "--per_device_eval_batch_size", "5", "--output_dir", tmp_path / "evaluate"]
    )["runs"]
    for train_name, evaluate_name in (("base", "base"), ("minmax", "train")):
        train_run, evaluate_run = trained[train_name], evaluated[evaluate_name]
        assert train_run["counts"] == evaluate_run["counts"]
        assert train_run["overall"] == pytest.approx(evaluate_run["overall"], rel=1e-5)
        assert train_run["per_group"] == pytest.approx(evaluate_run["per_group"], rel=1e-5)
    assert trained["minmax"]["overall"] != pytest.approx(trained["base"]["overall"], rel=1e-5)  # it trained


# ----------------------------------------------------------------------------------------------- train and push
@pytest.mark.slow
def test_train_then_push_sends_adapter_card_and_report(tmp_path, tiny_lm, tiny_json, monkeypatch):
    from huggingface_hub import constants
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
    argv += ["--objective", "minmax", "--lora_r", "2", "--lora_target_modules", "q_proj", "v_proj"]
    argv += ["--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "0.05"]
    argv += ["--output_dir", out, "--report_to", "none", "--save_strategy", "no", "--use_cpu"]
    argv += ["--push_to_hub", "--hub_model_id", "me/tiny-egt", "--hub_token", "hf_cli_token"]
    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        result = _main(argv)

    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "report.json", "report.png"} <= set(
        hub.files
    )
    assert hub.files["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    card = hub.files["README.md"].decode()
    assert f"base_model: {tiny_lm}" in card and "- hf-egt" in card and "library_name: peft" in card
    assert "hf_cli_token" not in card and "model-index" in card and "| a |" in card
    assert set(json.loads(hub.files["report.json"])["runs"]) == {"base", "minmax"}
    assert all(auth == "Bearer hf_cli_token" for auth in hub.authorizations)
    assert result["commit_url"].endswith("/commit/0123456789abcdef0123456789abcdef01234567")
    # the pushed adapter is a plain peft adapter that changed during training
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in name and weights[name].abs().sum() > 0 for name in weights)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), out)
    assert model.peft_config["default"].r == 2


# ------------------------------------------------------------------------------------------------------------ demo
@pytest.mark.slow
def test_demo_options_override_the_preset_field_of_their_name():
    from hf_egt.apps.cli import build_parser
    from hf_egt.apps.demo import demo_settings
    from hf_egt.apps.recipe import DEFAULT, QUICK

    def settings(*argv):
        return demo_settings(build_parser(["demo"]).parse_args(["demo", *argv]))

    assert settings() == DEFAULT and settings("--quick") == QUICK  # an option not given keeps the preset's value
    assert (DEFAULT.feature_model, QUICK.feature_model) == ("minilm", None)
    assert settings("--feature_model", "none").feature_model is None
    assert settings("--quick", "--feature_model", "minilm").feature_model == "minilm"
    changed = settings("--per_device_train_batch_size", "3", "--objective", "ema", "--max_steps", "5")
    assert (changed.per_device_train_batch_size, changed.objective, changed.max_steps) == (3, "ema", 5)
    with pytest.warns(FutureWarning, match="--no_egt is deprecated"):
        assert settings("--no_egt").feature_model is None


def test_demo_command_on_a_tiny_model(tmp_path, tiny_lm, monkeypatch):
    from dataclasses import replace

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_egt.apps.demo import QUICK, demo_data, minmax_note
    from hf_egt.integrations.evaluation import evaluate_causal_lm

    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--feature_model", "none", "--output_dir", out, "--model_name_or_path", tiny_lm]
    argv += ["--max_steps", "2", "--max_train_per_group", "8", "--max_eval_per_group", "3"]
    argv += ["--per_device_train_batch_size", "4"]
    _main(argv)

    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == ["base", "erm", "minmax"]
    for run in report["runs"].values():
        assert set(run) >= {"per_group", "gap", "worst_group", "overall"}
        assert len(run["per_group"]) == 4
    assert (out / "report.png").stat().st_size > 1000
    markdown = (out / "report.md").read_text()
    assert "| **gap (max − min)** |" in markdown
    assert minmax_note(report["runs"]["erm"], report["runs"]["minmax"], 2) in markdown
    weights = report["config"]["minmax_group_weights"]
    assert sorted(weights) == sorted(report["runs"]["erm"]["per_group"])
    assert sum(points[-1][1] for points in weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert "](weights.png)" in markdown and (out / "weights.png").stat().st_size > 1000
    # the base row is the untouched model's evaluation on the same held-out rows
    settings = replace(QUICK, max_train_per_group=8, max_eval_per_group=3, feature_model=None)
    _, test = demo_data(settings)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_lm), AutoTokenizer.from_pretrained(tiny_lm)
    base = evaluate_causal_lm(model, tokenizer, test["text"], test["group"], max_length=settings.max_length)
    assert report["runs"]["base"]["per_group"] == pytest.approx(base["per_group"])
    # each adapter loads with plain peft and reproduces its reported numbers
    adapter = PeftModel.from_pretrained(model, out / "adapters" / "minmax")
    again = evaluate_causal_lm(adapter, tokenizer, test["text"], test["group"], max_length=settings.max_length)
    assert report["runs"]["minmax"]["per_group"] == pytest.approx(again["per_group"], rel=1e-5)
    assert report["runs"]["minmax"]["per_group"] != pytest.approx(report["runs"]["erm"]["per_group"])
    assert "library_name: peft" in (out / "adapters" / "minmax" / "README.md").read_text()


@pytest.mark.parametrize(
    ("minmax_worst", "minmax_overall", "says"), [(60.48, 57.47, "higher (worse)"), (50.0, 49.0, "lower (better)")]
)
def test_demo_note_reads_the_direction_from_the_numbers(minmax_worst, minmax_overall, says):
    from hf_egt.apps.demo import minmax_note

    erm = {"per_group": {"a": 56.50, "b": 49.61}, "worst_group": "a", "overall": 54.03}
    minmax = {"per_group": {"a": minmax_worst, "b": 40.0}, "worst_group": "a", "overall": minmax_overall}
    note = minmax_note(erm, minmax, 60)
    assert f"is {says} under min-max ({minmax_worst:.2f}, a) than under ERM (56.50, a)" in note
    assert ("overall perplexity is higher" in note) == (minmax_overall > 54.03)
    assert "fixed budget of 60 steps" in note


def test_group_weight_history_reads_the_logged_weights_in_step_order():
    from hf_egt.integrations.evaluation import group_weight_history

    log = [
        {"step": 4, "loss": 1.0, "group_weight/b": 0.6, "group_weight/a": 0.4},
        {"step": 2, "loss": 1.2, "group_weight/a": 0.5, "group_weight/b": 0.5},
        {"step": 4, "eval_loss": 1.1},
    ]
    assert group_weight_history(log) == {"a": [(2, 0.5), (4, 0.4)], "b": [(2, 0.5), (4, 0.6)]}


def test_console_script_exits_zero_after_a_command(tmp_path, tiny_lm, tiny_json):
    """Through the entry point pyproject.toml installs as `hf-egt` (what a shell runs): exit 0, report on disk."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    module, function = pyproject["project"]["scripts"]["hf-egt"].split(":")
    script = f"import sys; from {module} import {function}; sys.argv[0] = 'hf-egt'; sys.exit({function}())"
    out = tmp_path / "eval"
    argv = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
    argv += ["--feature_model", "none", "--output_dir", out, "--max_eval_per_group", "4"]
    result = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "report.json").is_file()


def test_evaluate_command_embedding_egt(tmp_path, tiny_lm, tiny_json):
    from transformers import AutoTokenizer, BertConfig, BertModel

    encoder = tmp_path / "encoder"
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    out = tmp_path / "eval"
    argv = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
    argv += ["--eval_split", "train", "--max_eval_per_group", "8", "--feature_model", encoder, "--max_new_tokens", "4"]
    _main([*argv, "--max_prompts_per_group", "7", "--divergence", "kl", "--output_dir", out])

    egt = json.loads((out / "report.json").read_text())["runs"]["base"]["egt"]
    assert egt["counts"] == {"a": {"real": 7, "generated": 7}, "b": {"real": 7, "generated": 7}}
    assert egt["gap"] == pytest.approx(abs(egt["per_group"]["a"] - egt["per_group"]["b"]))
    assert "EGT: divergence" in (out / "report.md").read_text()


@pytest.mark.slow
def test_train_runs_under_accelerate_launch(tmp_path, tiny_lm, tiny_json):
    """`accelerate launch -m hf_egt.apps.cli train` on 2 CPU processes: one adapter, one report, written by rank 0."""
    out = tmp_path / "ddp"
    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
    argv += ["--lora_r", "2", "--lora_target_modules", "q_proj", "--max_steps", "2"]
    argv += ["--per_device_train_batch_size", "2"]
    argv += ["--output_dir", out, "--report_to", "none", "--save_strategy", "no", "--eval_base", "false"]
    result = run_accelerate_launch(["-m", "hf_egt.apps.cli", *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == ["minmax"] and set(report["runs"]["minmax"]["per_group"]) == {"a", "b"}
    assert report["config"]["num_processes"] == 2  # one distributed run, not two independent ones
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()


@pytest.mark.slow
def test_finetune_and_push_example(tmp_path, tiny_lm, tiny_json, monkeypatch):
    """The copy-me example: fine-tune, write report and card, push adapter + card + report in one commit."""
    import importlib.util

    from huggingface_hub import constants

    path = REPO_ROOT / "examples" / "finetune_and_push.py"
    spec = importlib.util.spec_from_file_location("finetune_and_push", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "example"
    argv = ["--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender", "--max_steps", "2"]
    argv += ["--lora_r", "2", "--lora_target_modules", "q_proj", "--per_device_train_batch_size", "4"]
    argv += ["--output_dir", out, "--hub_model_id", "me/example", "--hub_token", "hf_example_token"]
    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        runs = example.main([str(arg) for arg in argv])
    assert list(runs) == ["base", "minmax"]
    assert {"adapter_model.safetensors", "README.md", "report.json", "report.png"} <= set(hub.files)
    card = hub.files["README.md"].decode()
    assert "hf_example_token" not in card and "<redacted>" in card and "- minmax" in card


def test_group_perplexity_leaves_out_unscored_texts_and_names_empty_groups():
    from hf_egt.integrations.evaluation import group_perplexity

    nll = torch.tensor([6.0, 0.0, 3.0, 2.0])
    tokens = torch.tensor([3.0, 0.0, 1.0, 1.0])  # the second text is a single token: nothing predicted
    result = group_perplexity(nll, tokens, ["b", "a", "a", "b"])
    assert list(result["per_group"]) == ["a", "b"]
    assert result["loss_per_group"] == {"a": pytest.approx(3.0), "b": pytest.approx(2.0)}
    assert result["overall"] == pytest.approx(math.exp(11.0 / 5.0))
    with pytest.raises(ValueError, match=r"\['c'\] have no text"):
        group_perplexity(nll, tokens, ["b", "c", "a", "b"])
