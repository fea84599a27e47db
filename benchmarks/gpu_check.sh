#!/usr/bin/env bash
# GPU check of metis on one CUDA GPU (H100/H200 class), offline, finishing in <= 7 minutes:
# golden replays on CUDA, every task x fp32/bf16/fp16 against the CPU, the host-sync detector,
# full-size SE / TTS speed, VRAM and token agreement, a CUDA train step resumed on the CPU.
# It prints one table (section | check | result | figures); details in OUTDIR/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [extra gpu_check.py options]
#
# STATUS: NOT YET RUN ON A GPU. Written in a session without one; its CPU paths ran end to end
# on the tiny bundle with `python benchmarks/gpu_check.py --device cpu --full-from-tiny --quick`.
#
# Needs a Python whose torch sees the GPU, plus transformers, safetensors, numpy, soundfile
# (+ cffi, pycparser) and soxr. On an offline machine put wheels of what is missing into .whl/:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl soundfile cffi pycparser soxr
# The text front end (phonemizer / espeak) and PyAV are not needed: TTS runs with stub phone ids
# and L2S with synthetic mouth crops (CPU code that CI covers).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-$PWD/gpu_check_out}}
shift || true
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export METIS_CACHE_DIR=${METIS_CACHE_DIR:-/tmp/metis_gpu_cache}     # feature + bf16 caches off $HOME
export METIS_BF16_CACHE_DIR=$METIS_CACHE_DIR/bf16

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" - <<'PYEOF' || { echo "gpu_check: prerequisites missing (see the header of this script)" >&2; exit 2; }
import numpy, safetensors, soundfile, soxr, torch, transformers  # noqa: F401
assert torch.cuda.is_available(), "torch does not see a CUDA device"
PYEOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUTDIR/nvidia_smi.txt"
df -h /tmp | tail -1 | tee -a "$OUTDIR/nvidia_smi.txt"   # the full-size checkpoints need ~12 GB

# 360 s of checks inside a 420 s hard limit; sections that would not fit are skipped, not cut
timeout --kill-after=20 420 "$PY" benchmarks/gpu_check.py --out "$OUTDIR" --budget 360 "$@" 2>&1 | tee "$OUTDIR/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check: exit $rc (0 = every check passed; 124 = the hard time limit; results in $OUTDIR)"
exit "$rc"
