#!/usr/bin/env bash
# Feeds docs/benchmarking.md, docs/training.md and docs/export.md (the real-data figures).
# Reproduces docs/results.md on the real data: prepare -> train Lite0 -> export -> bench, plus
# ResNet50's latency/size rows (weights "none": its accuracy means nothing, its speed does).
# Usage: bash studies/real_results.sh [DATA_SOURCE] [WORK_DIR]   (about 3 hours on 2 CPU cores)
# The train+val model (the one to ship, measured on the withheld test split) is trained last.
set -euo pipefail
SOURCE=${1:-../shared/data/oxford102-trainval}
WORK=${2:-runs/real}
FE=.venv/bin/floraedge
mkdir -p "$WORK"
[ -d "$WORK/flowers" ] || $FE prepare --source "$SOURCE" --out "$WORK/flowers"
[ -f "$WORK/lite0/best.pt" ] || $FE train --data "$WORK/flowers" --arch efficientnet_lite0 \
  --out "$WORK/lite0" --workers 1 --threads 2 --no-progress 2>&1 | tee "$WORK/lite0.log"
.venv/bin/python -m studies.train_input_bench --data "$WORK/flowers" --batches 10 | tee "$WORK/train_input_bench.log"
$FE export --checkpoint "$WORK/lite0/best.pt" --data "$WORK/flowers" --out "$WORK/exports-lite0" --overwrite --allow-drop
# int8 weights per tensor instead of per channel: the A/B (accuracy in its MODEL_CARD.md, latency in bench)
$FE export --checkpoint "$WORK/lite0/best.pt" --data "$WORK/flowers" --out "$WORK/exports-lite0-per-tensor" --overwrite \
  --allow-drop --formats onnx --precisions int8 --per-tensor
$FE bench --models "$WORK/exports-lite0" --checkpoint "$WORK/lite0/best.pt" --data "$WORK/flowers" --out "$WORK/bench-lite0"
[ -f "$WORK/resnet50/best.pt" ] || $FE train --data "$WORK/flowers" --arch resnet50 --weights none --epochs 1 \
  --head-epochs 1 --out "$WORK/resnet50" --no-val --workers 1 --threads 2
$FE export --checkpoint "$WORK/resnet50/best.pt" --data "$WORK/flowers" --out "$WORK/exports-resnet50" --overwrite \
  --allow-drop --calib-n 102 --verify-n 102
$FE bench --models "$WORK/exports-resnet50" --data "$WORK/flowers" --out "$WORK/bench-resnet50" --limit 102 --runs 20 --threads 1,2
[ -f "$WORK/lite0-final/best.pt" ] || $FE train --data "$WORK/flowers" --arch efficientnet_lite0 \
  --train-splits train,val --no-val --out "$WORK/lite0-final" --workers 1 --threads 2 --no-progress
$FE export --checkpoint "$WORK/lite0-final/best.pt" --data "$WORK/flowers" --out "$WORK/exports-lite0-final" --overwrite
