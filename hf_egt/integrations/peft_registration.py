"""Register hf-egt's peft method (HyperLoRA) with peft as soon as peft is imported, without importing peft (and
torch, transformers) at ``import hf_egt``.

``import hf_egt`` calls :func:`register_when_peft_is_imported`: if peft is already imported, the method is registered
now; otherwise a one-shot import hook registers it right after peft's own import finishes, so that
``import hf_egt; from peft import PeftModel; PeftModel.from_pretrained(base, hyper_dir)`` works in either order.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys

logger = logging.getLogger(__name__)


def _register() -> None:
    try:
        importlib.import_module("hf_egt.integrations.hyper")  # registers on import
    except Exception as error:  # a broken registration must not break the user's `import peft`
        logger.warning("hf-egt could not register its HyperLoRA peft method: %r", error)


class _RegisterAfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first `import peft`, it wraps peft's loader so that the registration runs after
    peft's module has executed, then leaves `sys.meta_path`."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "peft":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("peft")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_peft_is_imported() -> None:
    if "peft" in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterPeftImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPeftImport())
