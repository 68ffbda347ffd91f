"""The public names of ``hf_egt``: each lazy export resolves, is listed, is seen by type checkers, and importing the
package alone pulls in none of the optional stacks."""

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_egt

OPTIONAL_STACKS = ("trl", "diffusers", "evaluate", "datasets", "torch", "transformers", "peft")


@pytest.mark.parametrize("name", [name for name in hf_egt.__all__ if name != "__version__"])
def test_every_public_name_resolves_and_is_listed(name):
    value = getattr(hf_egt, name)
    module = inspect.getmodule(value)
    if module is not None:  # a class or function: it is the object its defining module exports
        assert getattr(module, name, value) is value
    assert name in dir(hf_egt)


def test_measurement_names_are_the_library_objects():
    from hf_egt.core.metrics import registry, report
    from hf_egt.integrations import evaluation

    assert hf_egt.egt_report is report.egt_report
    assert hf_egt.DIVERGENCES is registry.DIVERGENCES
    assert hf_egt.RECOMMENDED_TEXT_DIVERGENCE in hf_egt.DIVERGENCES
    assert hf_egt.evaluate_causal_lm is evaluation.evaluate_causal_lm


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        hf_egt.no_such_name  # noqa: B018


def test_type_checking_block_imports_every_lazy_name():
    """Every lazy export appears in the ``TYPE_CHECKING`` block, from the module ``__getattr__`` loads it from."""
    tree = ast.parse(Path(hf_egt.__file__).read_text())
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    imported = {}
    for node in ast.walk(block):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
    expected = {name: f"hf_egt.{module}" for name, module in hf_egt._LAZY_EXPORTS.items()}
    assert imported == expected


def test_import_alone_loads_no_optional_stack():
    code = f"import json, sys; import hf_egt; print(json.dumps([m for m in {OPTIONAL_STACKS!r} if m in sys.modules]))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ)
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
