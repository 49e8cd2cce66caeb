#!/usr/bin/env bash
# Downloads (here, where pip reaches a registry) into .whl/ the wheels that gpu_check.py needs on a GPU
# machine whose image already holds torch, torchvision, numpy, pandas, pyarrow, pillow, scikit-learn,
# scipy, timm, regex, huggingface_hub, safetensors, tqdm, requests, six, urllib3 and setuptools but not
# open_clip or wilds (the lent H200: /work/.library/device/KINDS.md). Pure-python wheels, one version of
# each, pinned to what this project's venv holds; found with
#   unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist
#   open-clip-torch 3.3.0 -> ftfy -> wcwidth           (the model: gpu_check.py needs these)
#   wilds 2.0.0 -> ogb -> outdated -> littleutils; pytz (the real-size point through the WILDS loader;
#                                                          without them that row says "skipped")
# Then, on the device (run from the repository root, .whl carried):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root; .whl/ is in .gitignore
PY=${PYTHON:-python3}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl \
  open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
  wilds==2.0.0 ogb==1.3.6 outdated==0.2.2 littleutils==0.2.4 pytz==2026.6
ls -1 .whl
du -sh .whl
