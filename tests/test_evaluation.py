"""hf_egt.integrations.evaluation: the run summaries every surface reads, and strict JSON reports."""

import json
import math

import pytest

from hf_egt.integrations.evaluation import strict_json_dumps, write_report
from tests.conftest import load_strict_json


def test_undefined_values_are_null_with_their_reason_beside_them():
    payload = {
        "runs": {
            "base": {
                "per_group": {"a": 2.0, "b": math.nan},
                "gap": 0.0,
                "ratio": math.inf,
                "egt": {"gap_p_value": math.nan, "ci": {"a": [math.nan, math.nan]}},
            }
        }
    }
    text = strict_json_dumps(payload)
    decoded = json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in strict JSON"))
    assert decoded["runs"]["base"]["per_group"] == {"a": 2.0, "b": None}
    assert decoded["runs"]["base"]["ratio"] is None and decoded["runs"]["base"]["egt"]["ci"]["a"] == [None, None]
    reasons = decoded["undefined"]
    assert set(reasons) == {
        "runs/base/per_group/b",
        "runs/base/ratio",
        "runs/base/egt/gap_p_value",
        "runs/base/egt/ci/a/0",
        "runs/base/egt/ci/a/1",
    }
    assert "no real or no generated samples" in reasons["runs/base/per_group/b"]
    assert reasons["runs/base/ratio"].startswith("inf") and "n_permutations = 0" in reasons["runs/base/egt/gap_p_value"]
    assert "undefined" not in json.loads(strict_json_dumps({"runs": {"x": {"gap": 1.0}}}))


def test_write_report_writes_strict_json(tmp_path):
    run = {
        "metric": "perplexity",
        "per_group": {"a": 3.0, "b": math.inf},
        "counts": {"a": 2, "b": 1},
        "gap": math.inf,
        "ratio": math.inf,
        "worst_group": "b",
        "best_group": "a",
        "overall": 4.0,
    }
    paths = write_report({"base": run}, tmp_path)
    report = load_strict_json(paths["json"])
    assert report["runs"]["base"]["per_group"]["b"] is None and "runs/base/gap" in report["undefined"]
