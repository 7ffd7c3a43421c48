#!/usr/bin/env bash
# Run on a development machine (with PyPI) before a GPU session: downloads into .whl/ (git-ignored)
# the wheels that the GPU machine's image lacks, for its Python 3.12, so that a GPU session can
# run every gpu-marked test and both GPU benchmarks in one call of benchmarks/gpu/run_checks.sh.
# The image has torch, lightning, triton, transformers, tokenizers, numpy, pandas, pyarrow,
# fsspec, huggingface-hub, xxhash, psutil, py-cpuinfo, msgpack, einops, ninja, nvidia-ml-py.
# Versions are the ones CI tests with (deepspeed is an sdist on PyPI: built here, pure Python).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl  # git-ignored (.gitignore); a device run takes it with carry: [".whl"]
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
download() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$@"
}
download jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 rwkv==0.8.32 \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 flash-linear-attention==0.6.0 fla-core==0.6.0
# datasets 5.2 needs pyarrow >= 24 and huggingface-hub >= 1.31; the image's hub (1.33 when last
# read) is new enough, its pyarrow is unknown: --pyarrow adds one (about 45 MB of the 64 MB a
# device run may carry). The env stage of run_checks.sh says when one is missing.
if [ "${1:-}" = "--pyarrow" ]; then download pyarrow==26.0.1; fi
if ! ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then
  # setup.py imports torch: build with the current environment's (any build will do, no ops are compiled)
  DS_BUILD_OPS=0 python3 -m pip wheel --quiet --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
fi
du -sh .whl
ls .whl
