#!/usr/bin/env bash
# Create .venv with torch and curriculum (editable, with test extras).
# TORCH_SPEC picks the torch build (default: torch==2.13.0 from the configured pip index); GPU users pass their own,
# e.g. TORCH_SPEC="torch==2.5.1 --index-url <their CUDA wheel index>".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[test]"
