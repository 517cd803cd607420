#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the Python packages the lent GPU machine lacks: it has PyTorch,
# Triton, accelerate, pyarrow and tokenizers, but no network and no deepspeed, datasets or
# pydantic. Versions are the ones this checkout's venv was tested with (Python 3.12 wheels, the
# GPU machine's Python). benchmarks/gpu_session.sh installs them there. Run from anywhere:
#   bash scripts/gpu_wheels.sh            # then carry ".whl" with the device tool
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir .whl

# the versions installed here, so the GPU run uses what CI tested
pins=$("$py" - <<'PY'
from importlib.metadata import version
names = ["hjson", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
         "datasets", "dill", "multiprocess", "xxhash", "fsspec", "transformers",
         "huggingface_hub", "tokenizers"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
# DeepSpeed ships as source only: build its pure-Python wheel here (its ops JIT-build there)
ds=$("$py" -c "from importlib.metadata import version; print(version('deepspeed'))")
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$ds"

plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
# shellcheck disable=SC2086  # $pins is a list of requirements
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d .whl $pins
echo "gpu_wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry \".whl\")"
