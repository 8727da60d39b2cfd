#!/usr/bin/env bash
# Wheels the GPU machine lacks (its image has torch, triton, numpy, tensorboard, tqdm, h5py, ...
# but not these), for Python 3.12, into DIR (default .whl): carry DIR to the device and install
# them with `python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl`, then
# `export PYTHONPATH=/tmp/site`. Run here, where PyPI is reachable.
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
mj=$(python3 -c "import mujoco; print(mujoco.__version__)")  # the version tested here
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" \
    gymnasium==1.4.0 farama-notifications "mujoco==$mj" "mujoco-core==$mj" "mujoco-studio==$mj" \
    glfw pyopengl "minari==$(python3 -c "import minari; print(minari.__version__)")" \
    omegaconf==2.3.0 websockets  # websockets: mujoco-studio needs it
# omegaconf 2.3 needs antlr4-python3-runtime 4.9.*, published as a source archive only: build
# its (pure-Python) wheel here.
python3 -m pip wheel -q --no-deps -w "$dir" antlr4-python3-runtime==4.9.3
ls -la "$dir"
du -sh "$dir"
