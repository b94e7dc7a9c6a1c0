#!/usr/bin/env bash
# Run HERE (a machine with the package registry), before a GPU session: downloads into .whl/ (git-ignored) the
# cp312 x86-64 wheels that cgkd needs on the lent GPU machine, which has Python 3.12 and torch 2.11 (CUDA 13)
# but no registry (../shared/GPU.md). cgkd itself travels with the working tree (PYTHONPATH=.), not as a wheel.
# Wheels travel in `carry: [".whl"]`, 64 MiB per call with the working tree: see benchmarks/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLAT[@]}" -d .whl "$@"; }
get openmm==8.6.1 openmm-cuda-13==8.6.1        # AA and CG runs on CUDA
get openmmtorch==1.5 openmm-torch-cuda-13==1.5  # the TorchForce backend (may not load against torch 2.11)
get mdtraj pyyaml tqdm submitit cloudpickle     # cgkd's small dependencies
get pytest pluggy iniconfig packaging           # tests/test_cuda.py on the GPU machine
python3 -m pip wheel -q --no-deps -w .whl torchmd-net==3.1.0   # pure Python
ls -la .whl
du -ch .whl/*.whl | tail -1
