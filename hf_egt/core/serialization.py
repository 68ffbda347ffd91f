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


def check_safetensors_files(folder: str | os.PathLike, argument: str = "resume_from_checkpoint") -> None:
    """Open the header of every ``.safetensors`` file in ``folder``: a truncated or corrupt one is a ``ValueError``
    naming ``argument`` and the file (checked before anything is loaded from the folder)."""
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt") as handle:
                handle.keys()
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"`{argument}`: {path} is unreadable or truncated ({error}).") from error


# Files `torch.save` writes into Trainer and accelerate checkpoints (optimizer, scheduler, RNG, scaler, arguments).
TORCH_ARCHIVE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")


def check_torch_archive(path: str | os.PathLike, argument: str = "resume_from_checkpoint") -> None:
    """Check that ``path``, written by ``torch.save``, is a complete zip archive whose every member matches its CRC: a
    truncated or corrupt file is a ``ValueError`` naming ``argument`` and the file. Nothing is unpickled."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"`{argument}`: {path} is unreadable or truncated ({error}).") from error
    if bad is not None:
        raise ValueError(f"`{argument}`: {path} is corrupt (member {bad!r} fails its checksum).")


def check_checkpoint_files(folder: str | os.PathLike, argument: str = "resume_from_checkpoint") -> None:
    """``check_safetensors_files`` plus ``check_torch_archive`` on every optimizer, scheduler, RNG and scaler state
    (``.pt``, ``.pth``, ``.bin``, ``.pkl``) of ``folder`` and its sub-folders: every file a resume reads is checked
    before anything is loaded from it."""
    for root, _, names in sorted(os.walk(folder)):
        check_safetensors_files(root, argument)
        for name in sorted(names):
            if name.endswith(TORCH_ARCHIVE_SUFFIXES):
                check_torch_archive(os.path.join(root, name), argument)
