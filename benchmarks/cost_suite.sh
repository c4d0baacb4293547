#!/usr/bin/env bash
# Training cost of Sampling-Free vs the baseline (docs/BENCHMARKS.md section 2), about 25 minutes on an idle 2-core
# machine. Run it on an idle machine: every number is a same-process ratio, but load still adds noise.
# Needs the nuclei checkpoints of cpu_suite.sh step 5 for part 4 (skipped when absent).
# Usage (from the repository root):  bash benchmarks/cost_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export PYTHONPATH=.
OUT=docs/benchmarks
C=(python benchmarks/train_cost.py)

# 1. the paper's setting (Table IV: Faster R-CNN, R-50-FPN, 800 x 1333, batch 1), random init
"${C[@]}" --detectors faster_rcnn --backbone resnet50 --size 800 --max-size 1333 --aspect 1.6667 --batch 1 \
    --steps 4 --warmup 1 --mem-steps 2 --json $OUT/cost_paper_scale.json --md $OUT/cost_paper_scale.md
# 2. small scale (ResNet-18-FPN, 320 px, batch 2), all four detectors, random init
"${C[@]}" --detectors retinanet fcos faster_rcnn mask_rcnn --steps 6 --warmup 1 --mem-steps 2 \
    --json $OUT/cost_small.json --md $OUT/cost_small.md
# 3. small scale, Sampling-Free with 512 training proposals per image (the box-head cost knob)
"${C[@]}" --detectors faster_rcnn --steps 6 --warmup 1 --mem-steps 2 --sf-option rpn_post_nms_top_n_train=512 \
    --json $OUT/cost_small_512rois.json --md $OUT/cost_small_512rois.md
# 4. Mask R-CNN with a trained RPN on real nuclei tiles (~10 objects per 128 px tile: many positives), torchvision's
#    256-wide mask head: every positive (the paper) vs at most 128 random positives per image (the mask-head knob)
W=runs/benchmarks/nuclei/mask_rcnn/sampling_free/seed0/last.pt
NUC=(--detectors mask_rcnn --weights $W --data runs/benchmarks/cache/nuclei/train.json
     --images runs/benchmarks/cache/nuclei/images --size 128 --batch 2 --mask-head-channels 256 --steps 6 --warmup 1
     --mem-steps 2)
if [ -f "$W" ]; then
    "${C[@]}" "${NUC[@]}" --json $OUT/cost_nuclei_mask_rcnn.json --md $OUT/cost_nuclei_mask_rcnn.md
    "${C[@]}" "${NUC[@]}" --sf-option mask_positives_per_image=128 \
        --json $OUT/cost_nuclei_mask_rcnn_mask128.json --md $OUT/cost_nuclei_mask_rcnn_mask128.md
    "${C[@]}" "${NUC[@]}" --sf-option mask_positives_per_image=128 --sf-option rpn_post_nms_top_n_train=512 \
        --json $OUT/cost_nuclei_mask_rcnn_both.json --md $OUT/cost_nuclei_mask_rcnn_both.md
else
    echo "skipping part 4: $W not found (run benchmarks/cpu_suite.sh step 5 first)" >&2
fi
