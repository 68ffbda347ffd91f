"""The checks every ``hf-egt`` command shares, one rule each, run before any model is loaded or trained:

- the model (``--model_name_or_path``): :func:`check_model_path`, :func:`check_causal_lm`,
  :func:`check_target_modules`;
- the adapter (``--adapter``): :func:`check_adapter_path`;
- the output folder (``--output_dir``): :func:`check_output_dir` refuses a new run into a folder holding another run's
  checkpoints or outputs unless ``--overwrite_output_dir``; :func:`remove_checkpoints` is what that option removes,
  once every other check has passed;
- the resume (``--resume_from_checkpoint``): :func:`resolve_resume`, the one rule of ``train`` and
  ``train-diffusion``, and :func:`check_resume_allow_changes`;
- the optimizer's numbers: :func:`check_optimizer_options`, what AdamW and the schedule would reject only once the
  model is loaded.

The resume rule: nothing or ``false`` (``no``, ``0``) is a new run; ``true`` (``yes``, ``1``, ``latest``) is the newest
``checkpoint-<step>`` folder of ``--output_dir``, and an error when there is none; any other value is a checkpoint
folder, which must exist. ``train`` always refused ``true`` without a checkpoint, while ``train-diffusion`` started a
new run: the safer rule is kept, since a run asked to continue that silently starts over trains from scratch under a
command that says it resumes (and, with ``--overwrite_output_dir`` absent, in a folder the user meant to continue).
Each command then checks what its own checkpoints hold (``hf_egt.integrations.trainer.check_checkpoint``,
``hf_egt.integrations.diffusion.train.check_checkpoint``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from hf_egt.apps.arguments import FALSE_STRINGS, TRUE_STRINGS
from hf_egt.core.resume import checkpoints_of
from hf_egt.core.vocabulary import LEGACY_OBJECTIVE_STATE_NAMES, OBJECTIVE_STATE_NAME

logger = logging.getLogger(__name__)

# What a finished or interrupted run leaves in its output folder (train: the peft adapter or a full model; train-
# diffusion: a peft adapter or the diffusers LoRA file), besides its checkpoints: a new run must not overwrite it
# silently.
RUN_OUTPUTS = (
    "adapter_model.safetensors",
    "model.safetensors",
    "pytorch_lora_weights.safetensors",
    "report.json",
    OBJECTIVE_STATE_NAME,
    *LEGACY_OBJECTIVE_STATE_NAMES,
)


# ------------------------------------------------------------------------------------------------------------- model
def check_causal_lm(model_name_or_path: str) -> None:
    """Raise a ``ValueError`` when ``model_name_or_path`` has no causal-LM head (checked on its config, no weights).

    A ``.gguf`` file is accepted as is (GGUF checkpoints of text generators are causal LMs).
    """
    if Path(model_name_or_path).suffix == ".gguf":
        return
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(model_name_or_path)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"`--model_name_or_path`: {model_name_or_path!r} is a {config.model_type!r} model, which has no causal-LM "
            "head in transformers; pass a decoder-only text generator (Llama, Qwen2, GPT-2, SmolLM2, ...)."
        )
    causal_architectures = set()
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_architectures.update([names] if isinstance(names, str) else names)
    architectures = config.architectures or []
    if architectures and not any(
        name in causal_architectures or name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures
    ):
        raise ValueError(
            f"`--model_name_or_path`: {model_name_or_path!r} was saved as {architectures}, without a causal-LM head "
            f"(expected e.g. {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]!r}); a new head would be random."
        )


def check_model_path(model_name_or_path: str) -> None:
    """Raise a ``FileNotFoundError`` naming ``--model_name_or_path`` when it is neither an existing file or folder nor
    something the Hub (or its cache, offline) can resolve; then ``check_causal_lm`` (config only, no weights)."""
    path = Path(model_name_or_path).expanduser()
    looks_local = (
        path.suffix == ".gguf" or model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    )
    if not path.exists() and looks_local:
        raise FileNotFoundError(
            f"`--model_name_or_path`: no such file or folder {model_name_or_path!r}; pass a folder with a "
            "config.json, a .gguf file, or a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct."
        )
    try:
        check_causal_lm(str(path) if path.exists() else model_name_or_path)
    except OSError as error:  # includes huggingface_hub's errors for unknown or unreachable repos
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"`--model_name_or_path`: cannot load {model_name_or_path!r}: not a local folder with a config.json, "
            f"and the Hub (or its offline cache) does not have it ({first_line})."
        ) from error
    except ValueError as error:
        if str(error).startswith("`--model_name_or_path`"):
            raise
        raise ValueError(
            f"`--model_name_or_path`: {model_name_or_path!r} is not a valid folder or Hub id ({error})."
        ) from error


def check_target_modules(model_name_or_path: str, target_modules: Sequence[str]) -> None:
    """Every ``--lora_target_modules`` entry must name layers of the model (peft matches a name or a dotted suffix),
    checked on an empty (meta-device) model built from the config: no weights are read."""
    if list(target_modules) == ["all-linear"] or Path(model_name_or_path).suffix == ".gguf":
        return
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_name_or_path))
    names = [name for name, _ in model.named_modules()]
    missing = [key for key in target_modules if not any(n == key or n.endswith(f".{key}") for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(
            f"`--lora_target_modules`: {missing} match no layer of {model_name_or_path!r}; its linear layers are "
            f"{linear} (or pass `all-linear`)."
        )


def load_checked_causal_lm(model_name_or_path: str):
    """``hf_egt.apps.offline.load_causal_lm`` (Hub id, folder or ``.gguf`` file) after ``check_causal_lm``."""
    from hf_egt.apps.offline import load_causal_lm

    check_causal_lm(model_name_or_path)
    return load_causal_lm(model_name_or_path)


# ----------------------------------------------------------------------------------------------------------- adapter
def check_adapter_path(adapter: str | None) -> None:
    """A local ``--adapter`` folder must hold ``adapter_config.json``; anything else is taken as a Hub id."""
    if adapter is None:
        return
    path = Path(adapter)
    if path.is_dir() and not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"`--adapter`: {adapter!r} has no adapter_config.json; pass the output folder of `hf-egt train` (or any "
            "peft adapter folder)."
        )
    if not path.exists() and (adapter.startswith((".", "/", "~")) or adapter.count("/") > 1):
        raise FileNotFoundError(f"`--adapter`: no such folder {adapter!r}.")


# -------------------------------------------------------------------------------------------------------- output dir
def run_outputs(output_dir: str | Path) -> list[str]:
    """The checkpoints and output files of an earlier run found in ``output_dir`` (empty for a new folder)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = sorted(path.name for path in folder.glob("checkpoint-*") if path.is_dir())
    return found + [name for name in RUN_OUTPUTS if (folder / name).exists()]


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> list[str]:
    """Refuse (``ValueError``) a fresh run into a folder holding another run's outputs unless ``overwrite``; returns
    those outputs (what ``overwrite`` replaces)."""
    existing = [] if resume else run_outputs(output_dir)
    if existing and not overwrite:
        raise ValueError(
            f"`--output_dir`: {str(output_dir)!r} already holds the outputs of a run ({', '.join(existing[:6])}); pass "
            "`--resume_from_checkpoint true` to continue it, `--overwrite_output_dir` to replace it, or another "
            "`--output_dir`."
        )
    return existing


def remove_checkpoints(output_dir: str | Path) -> None:
    """Delete the ``checkpoint-*`` folders of an earlier run (``--overwrite_output_dir``), so that a later
    ``--resume_from_checkpoint true`` cannot pick one of them."""
    for path in sorted(Path(output_dir).glob("checkpoint-*")):
        if path.is_dir():
            logger.warning("--overwrite_output_dir: removing %s of an earlier run.", path)
            shutil.rmtree(path)


# ------------------------------------------------------------------------------------------------------------ resume
def resolve_resume(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """``--resume_from_checkpoint``, one rule for every command (see the module's docstring): ``None`` for a new run,
    else the checkpoint folder to resume from. A ``FileNotFoundError`` names the option and what would be valid."""
    if value is None or value is False or str(value).lower() in FALSE_STRINGS:
        return None
    if value is True or str(value).lower() in TRUE_STRINGS:
        found = checkpoints_of(output_dir)
        if not found:
            raise FileNotFoundError(
                f"`--resume_from_checkpoint` {str(value)!r}: no `checkpoint-<step>` folder in the output directory "
                f"{str(output_dir)!r} to resume from; pass a `checkpoint-<step>` folder, another `--output_dir`, or "
                "leave out `--resume_from_checkpoint` (or pass `false`) to start a new run."
            )
        return found[-1]
    if not os.path.isdir(value):
        raise FileNotFoundError(
            f"`--resume_from_checkpoint`: no such checkpoint folder {value!r}; pass a `checkpoint-<step>` folder, or "
            f"`true` (or `latest`) for the last one in `--output_dir` {str(output_dir)!r}."
        )
    return str(value)


def check_resume_allow_changes(allow_changes: Sequence[str], resume: str | None) -> None:
    """``--resume_allow_changes`` names differences a resume accepts: without a checkpoint to resume, it is an error
    (it would be silently ignored)."""
    if allow_changes and resume is None:
        raise ValueError("`--resume_allow_changes` only applies with `--resume_from_checkpoint`.")


# --------------------------------------------------------------------------------------------------------- optimizer
def check_optimizer_options(options) -> None:
    """The values AdamW and the learning-rate schedule reject only once the model is loaded (``learning_rate``,
    ``weight_decay``, ``adam_beta1`` / ``adam_beta2``, ``adam_epsilon``, ``warmup_steps`` of ``options``): a
    ``ValueError`` naming the option and its valid range."""
    bounds = (
        ("learning_rate", options.learning_rate >= 0, ">= 0"),
        ("weight_decay", options.weight_decay >= 0, ">= 0"),
        ("adam_beta1", 0 <= options.adam_beta1 < 1, "in [0, 1)"),
        ("adam_beta2", 0 <= options.adam_beta2 < 1, "in [0, 1)"),
        ("adam_epsilon", options.adam_epsilon >= 0, ">= 0"),
        ("warmup_steps", options.warmup_steps >= 0, ">= 0"),
    )
    for name, valid, rule in bounds:
        if not valid:
            raise ValueError(f"`--{name}` must be {rule}, got {getattr(options, name)}.")
