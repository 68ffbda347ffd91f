"""EGTSFTTrainer on a tiny conversational (prompt-completion) dataset with a tokenizer built offline."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from hf_egt import EGTSFTConfig, EGTSFTTrainer
from tests.integrations.trainer.test_egt_trainer import lora
from tests.trainer_utils import GROUP_TOKENS, VOCAB, tiny_llama

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} {{ message['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def chat_tokenizer(roles: tuple[str, ...] = ("user", "assistant")):
    """A word-level tokenizer of the tiny model's vocabulary, with one token per role, and ``CHAT_TEMPLATE`` (which
    has no ``{% generation %}`` markers)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", *[f"w{i}" for i in range(2, VOCAB - len(roles))], *roles]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def conversations(counts: dict[str, int], seed: int = 0) -> Dataset:
    """The user always says `w18 w19`; the assistant answers with tokens of its group's set."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for group, count in counts.items():
        tokens = torch.tensor(GROUP_TOKENS[group])
        for _ in range(count):
            answer = tokens[torch.randint(len(tokens), (int(torch.randint(3, 7, (1,), generator=generator)),))]
            rows.append(
                {
                    "prompt": [{"role": "user", "content": "w18 w19"}],
                    "completion": [{"role": "assistant", "content": " ".join(f"w{t}" for t in answer.tolist())}],
                    "group": group,
                }
            )
    return Dataset.from_list(rows)


def sft_config(tmp_path, **overrides) -> EGTSFTConfig:
    settings = dict(
        output_dir=str(tmp_path),
        objective="minmax",
        group_step_size=0.5,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        max_length=32,
    )
    settings.update(overrides)
    return EGTSFTConfig(**settings)


def test_sft_keeps_the_group_column_masks_the_prompt_and_matches_the_models_loss(tmp_path):
    tokenizer = chat_tokenizer()
    trainer = EGTSFTTrainer(
        model=tiny_llama(),
        args=sft_config(tmp_path, objective="erm"),
        train_dataset=conversations({"a": 6, "b": 4}),
        processing_class=tokenizer,
        peft_config=lora(head=False),  # TRL's fused LM head refuses an adapter on lm_head
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["group"].dtype == torch.long and set(batch["group"].tolist()) <= {0, 1}
    user_ids = tokenizer.convert_tokens_to_ids(["w18", "w19", "user"])
    answer_ids = tokenizer.convert_tokens_to_ids([f"w{t}" for tokens in GROUP_TOKENS.values() for t in tokens])
    trained = batch["labels"][batch["labels"] != -100]
    assert not torch.isin(trained, torch.tensor(user_ids)).any()  # completion-only: the prompt is masked
    assert torch.isin(batch["input_ids"], torch.tensor(user_ids)).any()
    assert torch.isin(trained, torch.tensor(answer_ids)).any()

    model = trainer.model.train()
    inputs = {k: v for k, v in batch.items() if k != "group"}
    with torch.no_grad():
        reference = model(**inputs).loss  # the model's own token-mean loss (no fused head)
        ours = trainer.compute_loss(model, batch)  # ERM over one window: the same token mean
    torch.testing.assert_close(ours, reference)


def test_sft_minmax_trains_and_logs_group_stats(tmp_path):
    trainer = EGTSFTTrainer(
        model=tiny_llama(),
        args=sft_config(tmp_path),
        train_dataset=conversations({"a": 12, "b": 4}),
        eval_dataset=conversations({"a": 3, "b": 3}, seed=1),
        processing_class=chat_tokenizer(),
        peft_config=lora(head=False),  # TRL's fused LM head refuses an adapter on lm_head
    )
    trainer.train()
    first = trainer.state.log_history[0]
    assert {"group_loss/a", "group_loss/b", "group_weight/b", "mean_token_accuracy"} <= first.keys()
    assert trainer.group_objective.step == 2
    metrics = trainer.evaluate()
    assert {"eval_group_loss/a", "eval_group_perplexity/b", "eval_group_loss_gap", "eval_worst_group"} <= metrics.keys()


def test_sft_refuses_packing():
    with pytest.raises(ValueError, match="packing"):
        EGTSFTConfig(output_dir="unused", packing=True)


def test_sft_missing_group_column(tmp_path):
    with pytest.raises(ValueError, match=r"no group column 'group'.*\['prompt', 'completion'\]"):
        EGTSFTTrainer(
            model=tiny_llama(),
            args=sft_config(tmp_path),
            train_dataset=conversations({"a": 2, "b": 2}).remove_columns("group"),
            processing_class=chat_tokenizer(),
        )


def messages_rows(groups: dict[str, int]) -> Dataset:
    """Conversations with a system turn, two user turns and two assistant turns (words of the group's set)."""
    rows = []
    for group, count in groups.items():
        tokens = GROUP_TOKENS[group]
        for i in range(count):
            messages = [
                {"role": "system", "content": "w20 w21"},
                {"role": "user", "content": "w18 w19"},
                {"role": "assistant", "content": f"w{tokens[i % 8]} w{tokens[(i + 1) % 8]}"},
                {"role": "user", "content": "w22"},
                {"role": "assistant", "content": f"w{tokens[(i + 2) % 8]}"},
            ]
            rows.append({"messages": messages, "group": group})
    return Dataset.from_list(rows)


def test_sft_labels_of_messages_cover_only_the_assistant_tokens(tmp_path):
    """On `messages` data with a chat template without `{% generation %}` markers, the labels of every example are
    exactly the assistant turns' tokens (content and end-of-turn `<eos>`), at their positions; system and user turns,
    role names and the generation prompt are masked. With `assistant_only_loss=False`, every token is trained."""
    tokenizer = chat_tokenizer(roles=("system", "user", "assistant"))
    data = messages_rows({"a": 3, "b": 2})
    trainer = EGTSFTTrainer(
        model=tiny_llama(),
        args=sft_config(tmp_path, objective="erm"),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora(head=False),
    )
    assert trainer.args.assistant_only_loss is None and trainer.args.bf16 is False
    for example, row in zip(trainer.train_dataset, data):
        ids, labels = example["input_ids"], example["labels"]
        assert ids == tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
        trained = [token for token, label in zip(ids, labels) if label != -100]
        assert all(label in (-100, token) for token, label in zip(ids, labels))
        expected = " ".join(f"{m['content']} <eos>" for m in row["messages"] if m["role"] == "assistant")
        assert tokenizer.convert_ids_to_tokens(trained) == expected.split()
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch["group"].tolist()) <= {0, 1}
    user_and_system = torch.tensor(tokenizer.convert_tokens_to_ids(["w18", "w19", "w20", "w21", "w22", "system"]))
    assert (
        not torch.isin(batch["labels"], user_and_system).any() and torch.isin(batch["input_ids"], user_and_system).any()
    )

    everything = EGTSFTTrainer(
        model=tiny_llama(),
        args=sft_config(tmp_path, objective="erm", assistant_only_loss=False),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora(head=False),
    )
    example = everything.train_dataset[0]
    assert example["labels"] == example["input_ids"]


def test_sft_assistant_only_loss_true_needs_conversations(tmp_path):
    text = Dataset.from_list([{"text": "w2 w3 w4", "group": "a"}, {"text": "w10 w11", "group": "b"}])
    with pytest.raises(ValueError, match=r"`assistant_only_loss=True` needs conversational data .*\['text', 'group'\]"):
        EGTSFTTrainer(
            model=tiny_llama(),
            args=sft_config(tmp_path, assistant_only_loss=True),
            train_dataset=text,
            processing_class=chat_tokenizer(),
        )


def test_sft_documented_config_works_on_cpu(tmp_path):
    """The docs' `EGTSFTConfig(output_dir=..., objective="minmax")`: TRL's bf16 default needs a GPU; here it is off
    where none supports it, and training runs."""
    from hf_egt.integrations.trainer.sft_config import bf16_available

    args = EGTSFTConfig(output_dir=str(tmp_path), objective="minmax")
    assert args.bf16 is bf16_available(False) and args.assistant_only_loss is None
    args.max_steps, args.report_to, args.per_device_train_batch_size = 1, [], 4
    trainer = EGTSFTTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=messages_rows({"a": 4, "b": 4}),
        processing_class=chat_tokenizer(roles=("system", "user", "assistant")),
        peft_config=lora(head=False),
    )
    trainer.train()
    assert trainer.state.global_step == 1
