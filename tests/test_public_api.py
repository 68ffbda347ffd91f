"""The public names of ``hf_egt``: each lazy export is the object of the module ``_LAZY_EXPORTS`` documents, ``dir``
lists exactly them, any other name is an AttributeError, type checkers see them all, and importing the package alone
pulls in none of the optional stacks."""

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_egt

OPTIONAL_STACKS = ("trl", "diffusers", "evaluate", "datasets", "torch", "transformers", "peft")


def documented_module(name: str):
    """The module `hf_egt._LAZY_EXPORTS` says `name` is loaded from."""
    return importlib.import_module(f"hf_egt.{hf_egt._LAZY_EXPORTS[name]}")


@pytest.mark.parametrize("name", [name for name in hf_egt.__all__ if name != "__version__"])
def test_every_public_name_is_the_object_of_its_documented_module(name):
    """Attribute access gives the very object the documented module holds; a class or function is defined inside
    hf_egt (not a third-party object passed through) and its defining module exports it under the same name."""
    value = getattr(hf_egt, name)
    assert getattr(documented_module(name), name) is value
    defined_in = getattr(value, "__module__", None)
    if defined_in is not None:  # a class or function (constants carry no `__module__`)
        assert defined_in == "hf_egt" or defined_in.startswith("hf_egt."), (name, defined_in)
        assert getattr(importlib.import_module(defined_in), name) is value, (name, defined_in)


def test_all_is_the_lazy_exports_and_the_version_once_each():
    assert len(hf_egt.__all__) == len(set(hf_egt.__all__))
    assert set(hf_egt.__all__) == {"__version__", *hf_egt._LAZY_EXPORTS}
    assert isinstance(hf_egt.__version__, str) and hf_egt.__version__


def test_dir_lists_exactly_the_public_names_and_each_resolves():
    listed = dir(hf_egt)
    assert listed == sorted(hf_egt.__all__)
    assert "_LAZY_EXPORTS" not in listed and "importlib" not in listed  # module internals are not advertised
    for name in listed:
        getattr(hf_egt, name)  # raises AttributeError if `dir` advertised a name that does not resolve


def test_a_lazy_name_is_loaded_on_first_access_and_then_kept():
    code = (
        "import hf_egt; before = 'GroupObjective' in vars(hf_egt); value = hf_egt.GroupObjective; "
        "import hf_egt.core.objective as module; "
        "print(before, vars(hf_egt)['GroupObjective'] is value is module.GroupObjective)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ)
    )
    assert result.stdout.strip().splitlines()[-1] == "False True"


def test_measurement_names_are_the_library_objects():
    from hf_egt.core.metrics import registry, report
    from hf_egt.integrations import evaluation

    assert hf_egt.egt_report is report.egt_report
    assert hf_egt.DIVERGENCES is registry.DIVERGENCES
    assert hf_egt.RECOMMENDED_TEXT_DIVERGENCE in hf_egt.DIVERGENCES
    assert hf_egt.evaluate_causal_lm is evaluation.evaluate_causal_lm


@pytest.mark.parametrize("name", ["no_such_name", "GroupCollator", "egt_trainer"])
def test_unknown_name_is_an_attribute_error_naming_it(name):
    """A name outside `__all__` is an AttributeError naming it, even one a submodule defines (`GroupCollator`)."""
    with pytest.raises(AttributeError, match=rf"^module 'hf_egt' has no attribute '{name}'$"):
        getattr(hf_egt, name)
    assert not hasattr(hf_egt, name)


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
