"""Tiny offline models and a two-group synthetic language-modelling task for the trainer tests."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = 32
# Group "a" (majority) writes tokens 2..9, group "b" (minority) tokens 10..17: a model that does not see the group
# must split its next-token mass between the two sets, so ERM favours "a" and min-max balances them.
GROUP_TOKENS = {"a": list(range(2, 10)), "b": list(range(10, 18))}


def tiny_llama(seed: int = 0, **config_overrides) -> LlamaForCausalLM:
    """A 2-layer, 32-wide random Llama (seeded); ``config_overrides`` replace any ``LlamaConfig`` field."""
    torch.manual_seed(seed)
    config = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(LlamaConfig(**{**config, **config_overrides}))


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def group_rows(counts: dict[str, int], seed: int = 0, min_len: int = 6, max_len: int = 12) -> list[dict]:
    """Rows of `input_ids` (BOS=1 then tokens of the group's set; variable lengths) with their group label."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for group, count in counts.items():
        tokens = torch.tensor(GROUP_TOKENS[group])
        for _ in range(count):
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
            body = tokens[torch.randint(len(tokens), (length,), generator=generator)]
            rows.append({"input_ids": [1, *body.tolist()], "group": group})
    order = torch.randperm(len(rows), generator=generator).tolist()
    return [rows[i] for i in order]


def group_dataset(counts: dict[str, int], seed: int = 0, **kwargs) -> Dataset:
    return Dataset.from_list(group_rows(counts, seed=seed, **kwargs))


def tiny_bpe_llama(corpus: list[str], vocab_size: int, max_position_embeddings: int = 128):
    """A tiny random LlamaForCausalLM and a byte-level BPE tokenizer trained offline on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    backend.train_from_iterator(corpus, bpe)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model = tiny_llama(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return model, tokenizer
