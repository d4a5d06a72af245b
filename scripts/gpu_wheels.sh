#!/usr/bin/env bash
# Wheels for the GPU machine (the device tool: Python 3.12, its own torch, an older transformers,
# no network): the locked versions of what the campaign imports beyond that machine's packages,
# into .whl/ (git-ignored), for `run(..., carry=[".whl"])` and benchmarks/gpu.sh.
#   bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
lock=lmms_rekv/requirements-lock.txt
names=(transformers huggingface_hub tokenizers safetensors regex hf-xet httpx2 httpcore2 kernels typer defusedxml dill sniffio truststore)
mkdir -p .whl
python=${PYTHON:-.venv/bin/python}
for name in "${names[@]}"; do
    pin=$(grep -i -E "^${name//[-_]/[-_]}==" "$lock" || true)
    if [ -z "$pin" ]; then echo "gpu_wheels: $name is not in $lock" >&2; exit 1; fi
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pin" 2> >(grep -v "is ignored" >&2)
done
du -sh .whl
