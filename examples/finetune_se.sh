#!/usr/bin/env bash
# Walk-through: fine-tune Metis SE on the tiny random bundle with synthesised data (CPU, ~1 min).
# With the real checkpoints drop --checkpoint-dir and point DATA at noisy/ + clean/ folders.
set -euo pipefail
WORK=${1:-$(mktemp -d)}
python -m metis_cli.testing.tiny_bundle "$WORK/bundle"
python - "$WORK" <<'PY'
import sys
from pathlib import Path
from tests.train.conftest import synth_pairs
w = Path(sys.argv[1])
synth_pairs(w / "train", 10, seed=1)
synth_pairs(w / "val", 5, seed=2)
PY
export METIS_CHECKPOINT_DIR="$WORK/bundle" METIS_CACHE_DIR="$WORK/cache"
# 1. fine-tune (continues the SE LoRA + adapter); held-out accuracy before/after is printed
metis finetune se "$WORK/train" "$WORK/se-ft" --val "$WORK/val" --steps 100 --batch-size 4 \
  --lr 3e-3 --warmup 10 --max-frames 60 --save-every 50
# 2. extend the same run to 150 steps (bit-identical to a straight 150-step run on CPU)
metis finetune se "$WORK/train" "$WORK/se-ft" --val "$WORK/val" --steps 150 --batch-size 4 \
  --lr 3e-3 --warmup 10 --max-frames 60 --resume
# 3. use it like any released model
mkdir -p "$WORK/enhanced"
metis enhance "$WORK/val/noisy/0.wav" -o "$WORK/enhanced" --model "$WORK/se-ft" --seed 0
ls -l "$WORK/se-ft" "$WORK/enhanced"
