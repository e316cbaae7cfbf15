#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with llm4tag (editable) and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Re-install only when the dependencies changed (the editable install tracks the code itself).
stamp=.venv/.llm4tag-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/llm4tag ]; then
    exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: on our machines this takes the local CPU build; left to a dependency
# resolver, pip would fetch the newest CUDA build (gigabytes).
.venv/bin/python -m pip install -q torch==2.13.0
# llama.cpp (the CPU engine) is published on PyPI as source only: built here (~6-10 min on 2 cores), for
# this CPU (AVX-512/VNNI where it has them: 1.4x the prompt speed of an AVX2 build on our Zen 4), or with
# LLAMA_PORTABLE=1 for any x86-64 with AVX2 (an image or venv that moves between machines). The engine
# refuses a build that uses instructions its CPU lacks. No multimodal library, no tools.
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    cpu="-DGGML_NATIVE=ON"
    if [ "${LLAMA_PORTABLE:-0}" = 1 ]; then
        cpu="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    fi
    CMAKE_ARGS="$cpu -DLLAVA_BUILD=OFF -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF ${LLAMA_CMAKE_ARGS:-}" \
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install -q --no-cache-dir \
        "$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)"
fi
.venv/bin/python -m pip install -q -e ".[dev]" 2> >(grep -v -e "Warning" -e "^ " -e "^$" -e "!!" >&2 || true)
# The default encoder's export for its backend (encoder.backend; llm4tag/encoder_exports.py), made from
# the bundled weights now rather than by the first process that encodes (under $LLM4TAG_HOME).
.venv/bin/llm4tag models install encoder >/dev/null
echo "$want" > "$stamp"
