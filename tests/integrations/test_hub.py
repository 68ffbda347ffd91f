"""Model card and push tests: the card's metadata and table, and a push received by a loopback Hub server."""

from __future__ import annotations

import base64
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

from hf_egt.core.metrics import group_run

RUNS = {
    "base": group_run({"A": 12.0, "B": 20.0}, {"A": 30, "B": 10}, 15.0),
    "minmax": group_run({"A": 11.0, "B": 13.5}, {"A": 30, "B": 10}, 12.1),
}


class FakeHub:
    """A loopback HTTP server speaking the endpoints huggingface_hub uses for create_repo + upload_folder.

    It records every request and decodes the NDJSON commit into ``files`` (path -> bytes).
    """

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.commit_header: dict | None = None
        self.authorizations: list[str | None] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                hub.requests.append(("GET", self.path))
                if self.path.startswith("/api/whoami"):
                    return self._reply(200, {"name": "tester", "type": "user", "orgs": []})
                return self._reply(404, {"error": f"unexpected GET {self.path}"})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                hub.requests.append(("POST", self.path))
                hub.authorizations.append(self.headers.get("Authorization"))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    hub.created.append(payload)
                    repo_id = f"{payload['organization']}/{payload['name']}"
                    return self._reply(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id, "id": "1"})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._reply(200, {"files": modes})
                if "/commit/" in path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            hub.commit_header = item["value"]
                        elif item["key"] == "file":
                            value = item["value"]
                            assert value["encoding"] == "base64"
                            hub.files[value["path"]] = base64.b64decode(value["content"])
                    oid = "0123456789abcdef0123456789abcdef01234567"
                    repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
                    return self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid})
                return self._reply(404, {"error": f"unexpected POST {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_hub(monkeypatch):
    """A FakeHub with huggingface_hub pointed at it (endpoint, online mode, a token in HF_TOKEN)."""
    from huggingface_hub import constants

    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        yield hub


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_metadata_table_and_model_index():
    from hf_egt.integrations.hub import build_model_card

    card = build_model_card(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        runs=RUNS,
        objective="minmax",
        model_name="me/smol-egt",
        dataset="me/bios",
        group_column="gender",
        command="hf-egt train --dataset me/bios",
        tags=["bold"],
    )
    meta = _front_matter(str(card))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft"
    assert {"hf-egt", "fairness", "lora", "minmax", "bold"} <= set(meta["tags"])
    assert meta["datasets"] == ["me/bios"]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    # model-index holds the last run's numbers (the trained adapter), not the base model's
    assert metrics == {
        "perplexity (A)": 11.0,
        "perplexity (B)": 13.5,
        "perplexity gap (worst − best group)": 2.5,
        "perplexity (overall)": 12.1,
    }
    text = card.text
    # the evaluated rows come from the runs' own counts
    assert "| A | 30 | 12.00 | 11.00 |" in text and "| B | 10 | 20.00 | 13.50 |" in text
    assert "**8.00**" in text and "**2.50**" in text
    assert "![per-group perplexity](report.png)" in text
    assert "hf-egt train --dataset me/bios" in text and "min-max group DRO" in text


def test_model_card_without_runs_has_its_sections_and_no_report():
    """The diffusion script's card: nothing measured, so no EGT table and no model-index; its own sections."""
    from hf_egt.integrations.hub import build_model_card

    card = build_model_card(
        base_model="me/unet",
        runs={},
        objective="minmax",
        model_name="digits-lora",
        pipeline_tag="unconditional-image-generation",
        description="LoRA on a UNet.",
        sections={"Group weights": "| group | final weight |\n|---|---|\n| 0 | 0.5000 |"},
    )
    meta = _front_matter(str(card))
    assert meta["base_model"] == "me/unet" and "model-index" not in meta and "model_name" not in meta
    text = card.text
    assert "EGT) report" not in text and "Gap = worst group" not in text
    assert "# digits-lora\n\nLoRA on a UNet.\n\n## Group weights\n\n| group | final weight |" in text
    assert text.index("## Group weights") < text.index("## Training")
    with_runs = build_model_card(base_model="m", runs=RUNS, objective="erm", model_name="x", sections={"Notes": "n"})
    assert with_runs.text.index("EGT) report") < with_runs.text.index("## Notes\n\nn\n\n## Training")


def test_model_card_shows_the_egt_tables_of_runs_that_carry_them():
    from hf_egt.core.metrics import egt_report
    from hf_egt.integrations.evaluation import egt_markdown
    from hf_egt.integrations.hub import GENERATION_SECTION, build_model_card

    generator = torch.Generator().manual_seed(0)
    real, generated = torch.randn(80, 2, generator=generator), 0.5 + torch.randn(80, 2, generator=generator)
    labels = ["A"] * 40 + ["B"] * 40
    egt = egt_report(real, labels, generated_features=generated, generated_groups=labels, n_bootstrap=0, n_null=0)
    runs = {"base": RUNS["base"], "minmax": {**RUNS["minmax"], "egt": egt}}
    card = str(build_model_card(base_model="m", runs=runs, objective="minmax", model_name="x", sections={"Notes": "n"}))
    assert f"## {GENERATION_SECTION}\n\n{egt_markdown(runs)}" in card
    assert card.index(GENERATION_SECTION) < card.index("## Notes") < card.index("## Training")
    assert GENERATION_SECTION not in str(build_model_card(base_model="m", runs=RUNS, objective="erm", model_name="x"))


def test_model_card_rejects_unknown_result_run():
    from hf_egt.integrations.hub import build_model_card

    with pytest.raises(ValueError, match="result_run"):
        build_model_card(base_model="m", runs=RUNS, objective="erm", model_name="x", result_run="nope")


def test_local_dataset_path_is_not_listed_as_hub_dataset(tmp_path):
    from hf_egt.integrations.hub import build_model_card

    path = tmp_path / "data" / "bios.json"
    path.parent.mkdir()
    path.write_text("[]")
    card = build_model_card(base_model="m", runs=RUNS, objective="erm", model_name="x", dataset=str(path))
    assert "datasets" not in _front_matter(str(card))


def test_push_without_token_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub

    from hf_egt.integrations.hub import push_folder_to_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="--hub_token.*HF_TOKEN"):
        push_folder_to_hub(tmp_path, "me/repo")


def test_push_folder_sends_adapter_card_and_report(fake_hub, tmp_path):
    from hf_egt.integrations.hub import build_model_card, push_folder_to_hub

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (folder / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (folder / "report.json").write_text(json.dumps({"runs": RUNS}))
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"state")
    card = build_model_card(base_model="m/base", runs=RUNS, objective="minmax", model_name="me/egt-adapter")

    commit = push_folder_to_hub(folder, "me/egt-adapter", card_text=str(card), private=True)

    assert fake_hub.created == [{"name": "egt-adapter", "organization": "me", "visibility": "private"}]
    assert set(fake_hub.files) == {"adapter_config.json", "adapter_model.safetensors", "report.json", "README.md"}
    assert fake_hub.files["README.md"].decode() == str(card)
    assert json.loads(fake_hub.files["report.json"]) == {"runs": RUNS}
    assert fake_hub.files["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
    assert all(auth == "Bearer hf_test_token" for auth in fake_hub.authorizations)
    assert commit.oid == "0123456789abcdef0123456789abcdef01234567"


def test_push_uploads_only_the_allow_list_and_refuses_a_file_with_the_token(fake_hub, tmp_path):
    from hf_egt.integrations.hub import push_folder_to_hub

    folder = tmp_path / "adapter"
    (folder / "runs" / "x").mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "runs" / "x" / "events").write_bytes(b"log")
    (folder / "notes.env").write_text("HF_TOKEN=whatever")
    push_folder_to_hub(folder, "me/allow")
    assert set(fake_hub.files) == {"adapter_config.json"}
    (folder / "report.json").write_text(json.dumps({"token": "hf_test_token"}))
    requests = len(fake_hub.requests)
    with pytest.raises(ValueError, match=r"\['report.json'\] contain the Hub token"):
        push_folder_to_hub(folder, "me/allow")
    assert len(fake_hub.requests) == requests  # refused before the repo is created


# ------------------------------------------------------------------------------------- EGTTrainer.push_to_hub
def _tiny_trainer(tmp_path, **overrides):
    from peft import LoraConfig

    from hf_egt.integrations.trainer import EGTConfig, EGTTrainer
    from tests.trainer_utils import group_dataset, tiny_llama

    settings = dict(
        output_dir=str(tmp_path / "out"),
        objective="minmax",
        per_device_train_batch_size=4,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    settings.update(overrides)
    model = tiny_llama()
    model.config._name_or_path = "me/tiny-base"  # as `from_pretrained("me/tiny-base")` records it
    return EGTTrainer(
        model=model,
        args=EGTConfig(**settings),
        train_dataset=group_dataset({"a": 6, "b": 2}),
        eval_dataset=group_dataset({"a": 4, "b": 4}, seed=1),
        peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )


def test_trainer_push_to_hub_sends_the_egt_card_and_only_the_allow_list(fake_hub, tmp_path):
    """`EGTTrainer.push_to_hub` (Trainer's API, with `push_to_hub=True` and checkpoints every step): one commit, at
    the end, holding the EGT card of the last evaluation and the allow-listed files; no checkpoint, no token."""
    from hf_egt.integrations.hub import UPLOAD_PATTERNS, files_to_upload
    from hf_egt.integrations.trainer.egt_trainer import OBJECTIVE_STATE_NAME

    trainer = _tiny_trainer(tmp_path, push_to_hub=True, hub_model_id="me/tiny-egt", hub_token="hf_test_token")
    trainer.train()
    metrics = trainer.evaluate()
    commits_before = [path for _, path in fake_hub.requests if "/commit/" in path]
    commit = trainer.push_to_hub(dataset_name="synthetic two-group task")

    assert commits_before == []  # checkpoints were saved locally, not pushed
    assert commit.oid == "0123456789abcdef0123456789abcdef01234567"
    out = tmp_path / "out"
    assert (out / "checkpoint-1").is_dir()
    assert set(fake_hub.files) == set(files_to_upload(out, UPLOAD_PATTERNS))
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", OBJECTIVE_STATE_NAME} <= set(
        fake_hub.files
    )
    assert not any(name.startswith("checkpoint-") or name.endswith(".bin") for name in fake_hub.files)
    assert [name for name, content in fake_hub.files.items() if b"hf_test_token" in content] == []
    card = fake_hub.files["README.md"].decode()
    front = _front_matter(card)
    assert "hf-egt" in front["tags"] and front["library_name"] == "peft"
    assert front["base_model"] == "me/tiny-base"
    pushed = {r["name"]: r["value"] for r in front["model-index"][0]["results"][0]["metrics"]}
    for group in ("a", "b"):  # the card's numbers are exp(the evaluation's per-group token-mean loss)
        expected = math.exp(metrics[f"eval_group_loss/{group}"])
        assert pushed[f"perplexity ({group})"] == pytest.approx(expected, abs=1e-4)
        assert f"| {group} | 4 | {expected:.2f} |" in card  # with the group's evaluated rows
    assert "Trainer" not in card.split("---\n", 2)[2][:200]  # not transformers' default card


def test_trainer_push_refuses_a_file_holding_the_token(fake_hub, tmp_path):
    trainer = _tiny_trainer(tmp_path, save_strategy="no", hub_model_id="me/leak")
    trainer.evaluate()
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "report.md").write_text("token: hf_test_token")
    with pytest.raises(ValueError, match=r"\['report.md'\] contain the Hub token"):
        trainer.push_to_hub()
    assert not any("/commit/" in path for _, path in fake_hub.requests)


def test_create_model_card_writes_the_given_runs(tmp_path):
    trainer = _tiny_trainer(tmp_path, save_strategy="no")
    trainer.create_model_card(model_name="me/cols", runs=RUNS, settings={"seed": 0})
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| A | 30 | 12.00 | 11.00 |" in card and "- seed: `0`" in card
    assert card.split("---\n", 2)[2].lstrip().startswith("# me/cols")


def _undefined_names(code: str) -> list[str]:
    """Names a snippet reads but neither imports, assigns nor gets from builtins (what ruff's F821 reports)."""
    import ast
    import builtins

    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            defined |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return sorted(used - defined)


def _snippets(card: str) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_card_snippets_define_every_name_they_use(tmp_path):
    """The loading snippets of every card (`hf-egt train`, with `--hyper`, and `train-diffusion` for a UNet and a
    Stable Diffusion pipeline) run as written: no undefined name, no placeholder repo."""
    pytest.importorskip("diffusers")
    from hf_egt.apps.train import hyper_usage
    from hf_egt.apps.train_diffusion import model_card, parse_args
    from hf_egt.integrations.diffusion.buckets import NoiseLevelGroupObjective
    from hf_egt.integrations.hub import build_model_card

    run = {
        "per_group": {"a": 2.0, "b": 3.0},
        "counts": {"a": 4, "b": 4},
        "gap": 1.0,
        "worst_group": "b",
        "overall": 2.5,
    }
    cards = [
        str(build_model_card(base_model="/models/tiny", runs={"minmax": run}, objective="minmax", model_name="me/x")),
        hyper_usage("/models/tiny", "me/x", 8),
    ]
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    for base in ("google/ddpm-cifar10-32", str(tmp_path / "pipeline")):
        args = parse_args(["--model_name_or_path", base, "--dataset", "digits-imbalanced", "--output_dir", "out/run"])
        objective = NoiseLevelGroupObjective(1, groups=[0, 1], objective="minmax")
        cards += [model_card(args, kind, objective) for kind in ("unet2d", "stable-diffusion")]
    for card in cards:
        snippets = _snippets(card)
        assert snippets and "<this repo>" not in card
        for snippet in snippets:
            assert _undefined_names(snippet) == [], snippet
    assert 'from_pretrained(unet, "run")' in cards[-2] and 'subfolder="unet"' in cards[-2]
    assert 'subfolder="unet"' not in cards[2]
