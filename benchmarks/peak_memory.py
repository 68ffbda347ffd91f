"""Peak memory of a window of training steps, the one measurement ``bench_trainer`` and ``bench_memory`` share.

``PeakMemory(after_step)`` is a ``TrainerCallback``: the window opens at ``on_train_begin`` (``after_step=0``) or at
the end of optimizer step ``after_step`` (``1``: leave out the warm-up step, whose allocations stay for the whole run)
and closes at ``on_train_end``; ``peak_growth`` is the peak inside it minus the memory held when it opened.

- CUDA: ``torch.cuda.reset_peak_memory_stats`` when it opens, ``torch.cuda.max_memory_allocated`` when it closes.
- CPU (Linux >= 4.0): the process's peak RSS is reset to its current RSS when the window opens
  (``/proc/self/clear_refs``) and read from ``VmHWM`` when it closes. Run each measurement in a fresh subprocess
  (``measure_in_subprocess``), with glibc returning freed blocks above 1 MiB at once (``MALLOC_MMAP_THRESHOLD_``) so
  that RSS follows the live tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

# glibc gives freed blocks above 1 MiB back to the system at once, so that RSS follows the live tensors (with its
# default, growing mmap threshold, freed activations stay resident and later peaks hide in them).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def rss_bytes() -> int:
    """The process's resident set size now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_since_reset() -> int:
    """The process's peak RSS (``VmHWM``) since the last ``reset_peak_rss``."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line: the peak RSS cannot be read on this system.")


class PeakMemory:
    """A callback measuring ``peak_growth`` (bytes) over the steps after optimizer step ``after_step`` (0: all of
    ``train()``), up to the end of training."""

    def __new__(cls, after_step: int = 0):
        from transformers import TrainerCallback

        class StepWindowMemory(TrainerCallback):
            base = None
            peak_growth = None

            def open_window(self) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    self.base = torch.cuda.memory_allocated()
                else:
                    reset_peak_rss()
                    self.base = rss_bytes()

            def on_train_begin(self, args, state, control, **kwargs):
                if after_step == 0:
                    self.open_window()

            def on_step_end(self, args, state, control, **kwargs):
                if after_step > 0 and state.global_step == after_step:
                    self.open_window()

            def on_train_end(self, args, state, control, **kwargs):
                if self.base is None:
                    raise RuntimeError(f"Training ended before the memory window opened (after step {after_step}).")
                peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else peak_rss_since_reset()
                self.peak_growth = peak - self.base

        return StepWindowMemory()


def measure_in_subprocess(module: str, kind: str, cell: dict) -> dict:
    """``<module>.measure(kind, cell)`` in a fresh interpreter (its peak RSS belongs to this run alone), with
    ``MALLOC_ENV``; returns what it returned (a JSON-serialisable dict)."""
    code = f"import json; from {module} import measure; print(json.dumps(measure({kind!r}, {cell!r})))"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))), **MALLOC_ENV}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{module}: {kind} {cell} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
