"""The package's layers point down: ``hf_egt.core`` imports nothing of ``hf_egt.integrations`` or ``hf_egt.apps`` (nor
the Hugging Face libraries the integrations wrap), its metric estimators nothing of the training objective, and
``hf_egt.integrations`` imports nothing of ``hf_egt.apps``; and no module of ``hf_egt`` imports itself through others
(an import circle, such as the metric registry's once between ``validation`` and ``report``).

Checked statically on the source (every import statement, including those inside functions), so an upward import
fails here even when it sits in a branch the other tests never run.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from tests import REPO_ROOT

PACKAGE = REPO_ROOT / "hf_egt"
CORE_FORBIDDEN = (
    "hf_egt.integrations",
    "hf_egt.apps",
    "transformers",
    "peft",
    "diffusers",
    "trl",
    "evaluate",
    "datasets",
    "accelerate",
)
# layer -> module prefixes it must not import (the first layer that a module's name starts with applies)
FORBIDDEN = {
    # the measurement does not depend on the training side of the core
    "hf_egt.core.metrics": (*CORE_FORBIDDEN, "hf_egt.core.objective", "hf_egt.core.samplers"),
    "hf_egt.core": CORE_FORBIDDEN,
    "hf_egt.integrations": ("hf_egt.apps",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (relative imports resolved against
    ``module``); ``from a import b`` yields both ``a`` and ``a.b``, since ``b`` may be a submodule."""
    found = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that its layer forbids, as ``"line: name"``."""
    forbidden = next((names for layer, names in FORBIDDEN.items() if module.startswith(layer)), ())
    return [
        f"{line}: {name}"
        for line, name in imported_modules(source, module, is_package)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def layered_sources() -> list[Path]:
    return sorted(path for layer in ("core", "integrations") for path in (PACKAGE / layer).rglob("*.py"))


def test_the_layers_hold_modules():
    names = {module_name(path) for path in layered_sources()}
    assert {"hf_egt.core.objective", "hf_egt.core.metrics.likelihood", "hf_egt.integrations.hub"} <= names


@pytest.mark.parametrize("path", layered_sources(), ids=lambda path: module_name(path))
def test_no_module_of_a_layer_imports_upward(path):
    module = module_name(path)
    assert upward_imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py") == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("hf_egt.core.objective", "from hf_egt.integrations.evaluation import runs_table\n"),
        ("hf_egt.core.metrics.likelihood", "def f():\n    from ...apps import demo\n"),
        ("hf_egt.core.metrics.likelihood", "from ..objective import group_sums\n"),
        ("hf_egt.core.losses", "import transformers.trainer\n"),
        ("hf_egt.integrations.hub", "import hf_egt.apps.cli\n"),
        ("hf_egt.integrations.trainer.config", "from ...apps.data import group_counts\n"),
    ],
)
def test_the_check_finds_an_upward_import(module, source):
    assert upward_imports(source, module) != []


def test_the_check_allows_downward_and_sibling_imports():
    source = "from hf_egt.core.groups import group_sums\nfrom ..metrics import summarize_groups\nimport torch\n"
    assert upward_imports(source, "hf_egt.integrations.trainer.egt_trainer") == []
    assert upward_imports("from .summary import summarize_groups\n", "hf_egt.core.metrics.likelihood") == []


def import_graph() -> dict[str, set[str]]:
    """Every module of ``hf_egt`` -> the modules of ``hf_egt`` it imports (at the top or inside a function)."""
    sources = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        module: {
            name
            for _, name in imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
            if name in sources and name != module
        }
        for module, path in sources.items()
    }


def import_circle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of ``graph`` (``[a, b, ..., a]``), or ``[]`` when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


def test_no_module_imports_itself_through_others():
    assert import_circle(import_graph()) == []


def test_the_check_finds_an_import_circle():
    graph = {"report": {"validation", "divergences"}, "validation": {"report"}, "divergences": set()}
    assert set(import_circle(graph)) == {"report", "validation"}
    source = "def minimum_samples():\n    from hf_egt.core.metrics.report import DIVERGENCES\n"
    assert (2, "hf_egt.core.metrics.report") in imported_modules(source, "hf_egt.core.metrics.validation")


# Programs other code must not build on: examples and benchmarks use the library and the data/recipe modules. (The
# diffusion examples are scripts of `hf-egt train-diffusion` itself, as diffusers' examples are scripts: they run its
# `parse_args` and `main`, hf_egt.apps.train_diffusion.)
PROGRAMS = ("hf_egt.apps.cli", "hf_egt.apps.demo", "hf_egt.apps.train", "hf_egt.apps.evaluate")
# One module per command; the entry point dispatches to them, and none of them imports another or the entry point.
COMMAND_MODULES = ("hf_egt.apps.train", "hf_egt.apps.evaluate", "hf_egt.apps.demo", "hf_egt.apps.train_diffusion")


def is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def script_sources() -> list[Path]:
    root = PACKAGE.parent
    return sorted(path for folder in ("examples", "benchmarks") for path in (root / folder).rglob("*.py"))


@pytest.mark.parametrize("path", script_sources(), ids=lambda path: path.name)
def test_examples_and_benchmarks_do_not_import_the_programs(path):
    imports = imported_modules(path.read_text(encoding="utf-8"), "script")
    used = [f"{line}: {name}" for line, name in imports if any(is_under(name, p) for p in PROGRAMS)]
    assert used == []


def package_sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def parses_command_lines(source: str) -> list[str]:
    """The imports of argparse in ``source`` (``"line: name"``)."""
    return [f"{line}: {name}" for line, name in imported_modules(source, "m") if is_under(name, "argparse")]


@pytest.mark.parametrize("path", package_sources(), ids=lambda path: module_name(path))
def test_only_the_apps_parse_command_lines(path):
    """Every argparse parser is a program's: the library (core, integrations) takes config objects and keywords."""
    if module_name(path).startswith("hf_egt.apps"):
        return
    assert parses_command_lines(path.read_text(encoding="utf-8")) == []


def test_the_argparse_check_finds_an_import():
    assert parses_command_lines("def f():\n    import argparse\n") == ["2: argparse"]
    assert parses_command_lines("from argparse import Namespace\n") != []


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_a_command_module_imports_no_other_command_nor_the_entry_point(module):
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    imports = imported_modules(path.read_text(encoding="utf-8"), module)
    others = [m for m in (*COMMAND_MODULES, "hf_egt.apps.cli") if m != module]
    assert [f"{line}: {name}" for line, name in imports if any(is_under(name, m) for m in others)] == []
