#!/usr/bin/env bash
# Sets up a fresh machine for hatzoo: a virtual environment with the package and its
# test and serving extras, and the offline data sets the demo and tests train on.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "[bootstrap] installing hatzoo with its serve and test extras"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[serve,test]" 2>&1 | grep -v "is ignored" || true
# The test extra brings tritonclient[http] with its dependencies (the real KServe v2 client, and Triton's
# model-config protobuf); its ml-dtypes pin resolves to 0.5.4, which onnx and torch's exporter accept.
.venv/bin/python -c "import torch, timm, onnxruntime, hatzoo" \
    || { echo "[bootstrap] the install did not complete; see pip's messages above" >&2; exit 1; }

bash scripts/fetch_data.sh
echo "[bootstrap] ready"
