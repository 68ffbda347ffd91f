#!/usr/bin/env bash
# The main job: offline end-to-end demo (fine-tune SmolLM2-135M with ERM and min-max on BOLD,
# measure per-group quality before and after, write report.json / report.md / report.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
VENV="${HF_EGT_VENV:-.venv}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/hf-egt" demo --output_dir "${1:-outputs/demo}" "${@:2}"
