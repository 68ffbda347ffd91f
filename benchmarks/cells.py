"""The resumable cells of a study (``quality_bold``, ``quality_languages``): one JSON file per (split, method, seed),
written atomically so that ``--resume`` trusts only whole cells, claimed with a lock file so that several processes
can share one queue, and aggregated as mean ± std over seeds."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path


def cell_path(output_dir: str | Path, split: str, method: str, seed: int) -> Path:
    """``<output_dir>/cells/<split>/<method>/seed<seed>.json`` (``split``: a BOLD domain or a study stage)."""
    return Path(output_dir) / "cells" / split / method / f"seed{seed}.json"


def base_path(output_dir: str | Path, split: str) -> Path:
    """The base model's cell of ``split``: ``<output_dir>/cells/<split>/base.json``."""
    return Path(output_dir) / "cells" / split / "base.json"


def read_json(path: Path) -> dict | None:
    """The cell at ``path``, or ``None`` while it is not written."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_json(path: Path, payload: Mapping) -> None:
    """Write through a temporary file, so a killed run never leaves a half-written cell that ``--resume`` trusts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    partial.replace(path)


def claim(path: Path) -> bool:
    """Claim the cell of ``path`` for this process (``path.lock`` holding its pid, created exclusively): ``False``
    when another live process holds it. A lock left by a dead process is taken over."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # its process is gone: a killed run
                continue
            except PermissionError:
                return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def release(path: Path) -> None:
    """Give back the claim on the cell of ``path``."""
    path.with_name(path.name + ".lock").unlink(missing_ok=True)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("`values` is empty: no finished cell to aggregate.")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
