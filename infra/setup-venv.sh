#!/usr/bin/env bash
# Create or update .venv with the pinned stack. Idempotent: a stamp keyed on this script and
# pyproject.toml skips the work when nothing changed and the stack still imports.
#
# CPU or CUDA: MTL_REC_DEVICE=cpu|cuda forces it; otherwise CUDA when `nvidia-smi -L` lists a GPU.
#   cpu : torch 2.13.0 CPU build + fbgemm-gpu-cpu 1.8.0
#   cuda: torch 2.13.0 (PyPI's default Linux build is the CUDA one) + fbgemm-gpu 1.8.0
# torchrec 1.8.0 goes in with --no-deps in both cases: its metadata requires `fbgemm-gpu`, and
# letting pip resolve that on a CPU machine would pull the CUDA build over the CPU one.
# TORCH_INDEX_URL (optional) points pip at another torch index, e.g. PyTorch's CPU wheel index on a
# laptop where PyPI's default build would bring several GB of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
FBGEMM_VERSION=1.8.0
TORCHREC_VERSION=1.8.0

device=${MTL_REC_DEVICE:-auto}
if [[ $device == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    device=cuda
  else
    device=cpu
  fi
fi
case $device in cpu|cuda) ;; *) echo "MTL_REC_DEVICE must be cpu, cuda or auto, got '$device'" >&2; exit 2 ;; esac

key=$(cat "$0" pyproject.toml | sha256sum | cut -c1-16)
stamp="$VENV/.mtl-rec-setup-$device-$key"
if [[ -f $stamp ]] && "$VENV/bin/python" -c "import mtl_rec.stack as s; s.check_stack()" 2>/dev/null; then
  echo "setup: $VENV is up to date ($device)"
  exit 0
fi

echo "setup: installing the $device stack into $VENV"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check)
torch_index=()
[[ -n ${TORCH_INDEX_URL:-} ]] && torch_index=(--index-url "$TORCH_INDEX_URL")

"${pip[@]}" "${torch_index[@]}" "torch==$TORCH_VERSION"
if [[ $device == cpu ]]; then
  "$VENV/bin/python" -m pip uninstall -y -q fbgemm-gpu 2>/dev/null || true
  "${pip[@]}" "fbgemm-gpu-cpu==$FBGEMM_VERSION"
else
  "$VENV/bin/python" -m pip uninstall -y -q fbgemm-gpu-cpu 2>/dev/null || true
  "${pip[@]}" "fbgemm-gpu==$FBGEMM_VERSION"
fi
"${pip[@]}" --no-deps "torchrec==$TORCHREC_VERSION"
"${pip[@]}" -e ".[dev]"

"$VENV/bin/python" -c "import mtl_rec.stack as s; s.check_stack(); print('setup: stack OK:', s.describe_stack())"
rm -f "$VENV"/.mtl-rec-setup-*
touch "$stamp"
