"""``benchmarks/cells.py``: the claims that let two processes share one queue of cells, atomic cell files, and
mean ± std over seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.cells import base_path, cell_path, claim, mean_std, read_json, release, write_json


def test_claim_is_exclusive_while_its_process_lives(tmp_path):
    path = tmp_path / "cells" / "test" / "erm" / "seed0.json"
    assert claim(path)
    assert (path.parent / "seed0.json.lock").read_text() == str(os.getpid())
    assert not claim(path)  # held by a live process (this one)
    release(path)
    assert not (path.parent / "seed0.json.lock").exists()
    assert claim(path)


def test_claim_takes_over_the_lock_of_a_dead_process(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "seed1.json"
    (tmp_path / "seed1.json.lock").write_text(finished.stdout.strip())
    assert claim(path)
    assert (tmp_path / "seed1.json.lock").read_text() == str(os.getpid())


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        mean_std([])


def test_cells_are_written_whole_and_read_back(tmp_path):
    path = cell_path(tmp_path, "test", "erm", 2)
    assert path == tmp_path / "cells" / "test" / "erm" / "seed2.json"
    assert base_path(tmp_path, "test") == tmp_path / "cells" / "test" / "base.json"
    assert read_json(path) is None  # not written yet: --resume runs it
    write_json(path, {"seed": 2, "per_group": {"en": 1.5}})
    assert read_json(path) == {"seed": 2, "per_group": {"en": 1.5}}
    assert [p.name for p in path.parent.iterdir()] == ["seed2.json"]  # no partial file left behind
