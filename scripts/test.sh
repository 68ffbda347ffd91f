#!/usr/bin/env bash
# The test command: lint with ruff, then the whole pytest suite, offline.
# pytest exits 5 when it collects no tests; `set -e` turns that into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
VENV="${HF_EGT_VENV:-.venv}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest "$@"
