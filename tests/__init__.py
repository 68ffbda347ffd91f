"""Tests mirror the package: ``tests/<layer>/[<subpackage>/]test_<module>.py`` (``test_<module>_<aspect>.py`` where
one module is tested from several sides); ``tests/metrics`` tests the evaluate module ``metrics/egt`` and
``tests/benchmarks`` the study scripts. ``test_layers``, ``test_vocabulary`` and ``test_public_api`` check the whole
package."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
