#!/usr/bin/env bash
# Walk-through: fine-tune Metis SE on the tiny random bundle with synthesised data (CPU, ~2 min).
# With the real checkpoints drop METIS_CHECKPOINT_DIR and write manifests of your own files.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
python -m metis_cli.testing.tiny_bundle "$WORK/bundle"
# synthetic noisy/clean pairs and one manifest per split: {"input": noisy, "target": clean}
PYTHONPATH="$REPO" python - "$WORK" <<'PY'
import sys
from pathlib import Path
from tests.train.conftest import synth_pairs, write_manifest
w = Path(sys.argv[1])
for split, n, seed in (("train", 10, 1), ("val", 5, 2)):
    write_manifest(synth_pairs(w / split, n, seed=seed), "se", "manifest.jsonl")
PY
head -n 2 "$WORK/train/manifest.jsonl"
export METIS_CHECKPOINT_DIR="$WORK/bundle" METIS_CACHE_DIR="$WORK/cache"
OPTS=(--batch-size 4 --lr 3e-3 --warmup 10 --max-frames 60 --save-every 50)
# 1. fine-tune (continues the released SE LoRA + adapter); stop after 60 of 100 steps
metis finetune --task se --data "$WORK/train/manifest.jsonl" --val "$WORK/val/manifest.jsonl" \
  --out "$WORK/se-ft" --max-steps 100 "${OPTS[@]}" --stop-after 60
# 2. continue the same run to step 100 (bit-identical to an uninterrupted run on CPU)
metis finetune --task se --data "$WORK/train/manifest.jsonl" --val "$WORK/val/manifest.jsonl" \
  --out "$WORK/se-ft" --max-steps 100 "${OPTS[@]}" --resume
tail -n 1 "$WORK/se-ft/log.jsonl"
# 3. use it like any released model
mkdir -p "$WORK/enhanced"
metis enhance "$WORK/val/noisy/0.wav" -o "$WORK/enhanced" --model "$WORK/se-ft" --seed 0
ls -l "$WORK/se-ft" "$WORK/enhanced"
