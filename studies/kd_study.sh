#!/usr/bin/env bash
# Feeds docs/training.md (distillation: the Lite2 teacher and the Lite0 student).
# Issue 19's distillation study in one resumable command: an EfficientNet-Lite2 teacher and a Lite0
# student that learns from it, both on the official train split at 256 px, selected on val; then each
# model's val top-1 (fp32, flip TTA and the teacher+student ensemble) and the Pareto view of their int8
# TFLite files against Lite0 at 224 px (accuracy vs latency, side by side in one run).
# Usage: bash studies/kd_study.sh [DATA_SOURCE] [WORK_DIR]
# Stop it at any time: run it again and every finished step is kept, an interrupted training resumes.
# On this 2-core CPU, estimated: 1.5-2 h for the teacher and as much for the student (measured: the teacher alone took 1.8 h at 1 thread beside other runs; a GPU:
# DEVICE=cuda, minutes). THREADS, DEVICE, PRECISION and EPOCHS override the defaults below.
set -euo pipefail
SOURCE=${1:-../shared/data/oxford102-trainval}
WORK=${2:-runs/kd-study}
FE=.venv/bin/floraedge
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-auto}
EPOCHS=${EPOCHS:-30}
DATA=$WORK/flowers293

# A training that resumes when its last.pt is there and is skipped when its summary.json is.
train() { # OUT ARGS...
    local out=$1
    shift
    [ -f "$out/summary.json" ] && return
    local resume=()
    [ -f "$out/last.pt" ] && resume=(--resume)
    $FE train --data "$DATA" --img-size 256 --epochs "$EPOCHS" --seed 0 --workers 1 --threads "$THREADS" \
        --device "$DEVICE" --precision "$PRECISION" --no-progress --out "$out" "${resume[@]}" "$@" 2>&1 | tee -a "$out.log"
}

# int8 TFLite of a checkpoint at its own input size, or at SIZE px (the same weights, another test-time size).
export_int8() { # CHECKPOINT OUT [SIZE]
    local checkpoint=$1
    [ -f "$2/model_int8.tflite" ] && return
    if [ -n "${3:-}" ]; then
        .venv/bin/python -m studies.pareto retarget --checkpoint "$1" --img-size "$3" --out "$2.pt"
        checkpoint=$2.pt
    fi
    $FE export --checkpoint "$checkpoint" --data "$DATA" --formats tflite --precisions int8 --calib-seed 0 \
        --allow-drop --overwrite --out "$2"  # the Pareto view measures what int8 costs: keep every file
}

mkdir -p "$WORK"
[ -f "$DATA/summary.json" ] || $FE prepare --source "$SOURCE" --out "$DATA" --cache-size 293
train "$WORK/lite2-teacher" --arch efficientnet_lite2
train "$WORK/lite0-student" --arch efficientnet_lite0 --teachers "$WORK/lite2-teacher/best.pt"
$FE evaluate --checkpoint "$WORK/lite0-student/best.pt" --ensemble "$WORK/lite2-teacher/best.pt" --data "$DATA" \
    --out "$WORK/eval-ensemble" | tee "$WORK/eval-ensemble.log"
export_int8 "$WORK/lite0-student/best.pt" "$WORK/int8/student-at224" 224
export_int8 "$WORK/lite0-student/best.pt" "$WORK/int8/student"
export_int8 "$WORK/lite2-teacher/best.pt" "$WORK/int8/teacher-at208" 208
export_int8 "$WORK/lite2-teacher/best.pt" "$WORK/int8/teacher"
.venv/bin/python -m studies.pareto --data "$DATA" --out "$WORK/pareto" --threads 1 --rounds 7 --runs 40 \
    --candidate "Lite0 student @224 (latency reference)=$WORK/int8/student-at224/model_int8.tflite" \
    --candidate "Lite0 student @256=$WORK/int8/student/model_int8.tflite" \
    --candidate "Lite2 teacher @208=$WORK/int8/teacher-at208/model_int8.tflite" \
    --candidate "Lite2 teacher @256=$WORK/int8/teacher/model_int8.tflite"
echo "kd_study: results in $WORK (each run's summary.json, eval-ensemble/, pareto/)"
