"""Safe persistence: tensors in safetensors, settings as JSON in the file's metadata. Nothing is unpickled."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

METADATA_KEY = "hf_egt"


def save_tensors_with_metadata(tensors: dict[str, torch.Tensor], metadata: dict, path: str | os.PathLike) -> None:
    """Write ``tensors`` to ``path`` (safetensors) with ``metadata`` stored as JSON in the header."""
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    save_file(contiguous, str(path), metadata={METADATA_KEY: json.dumps(metadata)})


def load_tensors_with_metadata(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what ``save_tensors_with_metadata`` wrote."""
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if METADATA_KEY not in header:
        raise ValueError(f"{path} was not written by hf_egt (no {METADATA_KEY!r} metadata).")
    return load_file(str(path)), json.loads(header[METADATA_KEY])
