#!/usr/bin/env bash
# Create .venv with torch, torchvision and curriculum (editable, with test extras).
# TORCH_SPEC picks the torch build; the default pair is one whose torchvision imports (Qwen-VL, InternVL,
# Pixtral, LLaVA-OneVision, SmolVLM, GLM-4V and LFM2-VL processors need it): on x86_64 PyPI's Linux wheels of
# torch 2.14.1 (built with CUDA; they run on CPUs too), on aarch64 the CPU wheels of torch 2.9.1. GPU users may
# pass their own, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url <their CUDA wheel index>".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -z "${TORCH_SPEC:-}" ]; then
  case "$(uname -m)" in
    aarch64 | arm64) TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -e ".[test]"
