#!/usr/bin/env bash
# Larger Sampling-Free benchmark run for a machine with a CUDA GPU. Records the machine, then runs the cost table
# and the accuracy comparison (all four detectors, 3 seeds, the ablation for RetinaNet) with GPU-sized budgets.
# Usage (from the repository root):  bash benchmarks/gpu_run.sh [OUT_DIR]      (default: docs/benchmarks/gpu)
# Env overrides: STEPS (default 1500), SEEDS ("0 1 2"), SIZE (512), BATCH (8), TIME_LIMIT (per command, seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/benchmarks/gpu}
STEPS=${STEPS:-1500}
SEEDS=${SEEDS:-"0 1 2"}
SIZE=${SIZE:-512}
BATCH=${BATCH:-8}
TL=${TIME_LIMIT:-0}   # 0 = no limit
RUNS=${RUNS:-runs/benchmarks_gpu}
mkdir -p "$OUT"
[ -f .venv/bin/activate ] && . .venv/bin/activate

run() {  # run with an optional time limit; a failure is recorded, the script goes on
  echo "+ $*" | tee -a "$OUT/commands.txt"
  if [ "$TL" -gt 0 ]; then timeout "$TL" "$@" || echo "exit $? : $*" | tee -a "$OUT/failures.txt";
  else "$@" || echo "exit $? : $*" | tee -a "$OUT/failures.txt"; fi
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi || echo "nvidia-smi not available"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  grep -m1 "model name" /proc/cpuinfo; nproc
  python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  git rev-parse HEAD 2>/dev/null || true; git status --short | head -20 || true
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for GPU sessions')"

# 1. cost (CUDA: time with synchronisation; memory also as torch.cuda.max_memory_allocated delta)
run python benchmarks/train_cost.py --device cuda --steps 30 --warmup 5 --mem-steps 5 --size 512 --batch 2 \
    --backbone resnet50 --profile --json "$OUT/train_cost.json" --md "$OUT/train_cost.md"

COMMON=(--device cuda --workers 4 --seeds $SEEDS --steps "$STEPS" --batch "$BATCH" --runs "$RUNS")
# 2. synthetic: all detectors, three methods; RetinaNet ablation (paper Table III)
run python benchmarks/accuracy.py --dataset synthetic --size "$SIZE" --train-images 2000 --val-images 200 "${COMMON[@]}" \
    --detectors retinanet fcos faster_rcnn mask_rcnn --variants baseline ce sampling_free --out "$OUT/accuracy_synthetic"
run python benchmarks/accuracy.py --dataset synthetic --size "$SIZE" --train-images 2000 --val-images 200 "${COMMON[@]}" \
    --detectors retinanet --variants ce ce+init ce+guided sampling_free --out "$OUT/ablation_synthetic_retinanet"
# control for the gradient-clipping confound (docs/BENCHMARKS.md 2b): same sweep without clipping, two-stage
run python benchmarks/accuracy.py --dataset synthetic --size "$SIZE" --train-images 2000 --val-images 200 "${COMMON[@]}" \
    --runs "${RUNS}_noclip" --grad-clip none --detectors faster_rcnn --variants baseline sampling_free \
    --out "$OUT/accuracy_synthetic_faster_rcnn_noclip"
# 3. raccoon photos (pretrained EfficientNet-Lite0; skipped when the data set is absent)
run python benchmarks/accuracy.py --dataset raccoon --size "$SIZE" "${COMMON[@]}" --detectors retinanet faster_rcnn \
    --variants baseline ce sampling_free --out "$OUT/accuracy_raccoon"
# 4. Mask R-CNN on real nuclei masks (needs: pip install --no-deps stardist)
run python benchmarks/accuracy.py --dataset nuclei --size 256 "${COMMON[@]}" \
    --detectors mask_rcnn --variants baseline ce sampling_free --out "$OUT/accuracy_nuclei"
echo "done; results in $OUT"
