#!/usr/bin/env bash
# What only a GPU can show, as one device call that fits a 15-minute device budget with room to rerun:
# the training step and eval forward at the study's resolution (fp32 and the fast mode, 6/100 and 3/50, random
# data), peak CUDA memory, what bf16 changes on fixed weights, the study's wall time extrapolated from them, and three
# seeds sharing the GPU one process each (bench_side_by_side.py: metrics against one after the other, throughput).
#
# Run on the device machine from the repository root, with $OUT set (the device tool sets it):
#     bash benchmarks/gpu_session.sh    # sized for about 7 minutes after the machine has started (never run yet)
# Needs torch, torchvision, scipy, psutil (the device machine has them); pycocotools is not needed (random data).
# Everything it measures comes back under $OUT: the JSON files of bench_step.py, the rows it appended to
# RESULTS.md (merge them into the local benchmarks/RESULTS.md by hand, naming the device), and study_estimate.txt.
set -euo pipefail
: "${OUT:?set OUT to a folder for the results}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    | tee -a "$OUT/gpu.txt"
before=$(wc -l < benchmarks/RESULTS.md)
python3 benchmarks/bench_step.py --device cuda --data random --sizes 800x1066 --variants 6/100,3/50 \
    --modes fp32,fast --phases train,eval --steps 20 --warmup 5 --loader-batches 0 --quiet-timeout 0 \
    --notes "gpu_session.sh, random data" 2>&1 | tee "$OUT/bench.log"
python3 benchmarks/bench_step.py --device cuda --bf16-diff --data random --sizes 800x1066 --no-results \
    2>&1 | tee "$OUT/bf16_diff.log"
tail -n +"$((before + 1))" benchmarks/RESULTS.md > "$OUT/results_rows.md"
cp benchmarks/bench_step-*.json "$OUT/" 2>/dev/null || true
python3 benchmarks/study_estimate.py benchmarks/bench_step-*.json | tee "$OUT/study_estimate.txt"
# seeds sharing one GPU (the study's 3 seeds of a notebook, one process each): metrics against one after the other,
# the device's own repeatability, and the throughput; DETR-R50's shape from random weights, 800 px, 2 epochs of 76
# images (about 2 minutes in all on an H100, not measured yet)
python3 benchmarks/bench_side_by_side.py --device cuda --model resnet50 --size 800 --images 96 --epochs 2 \
    --seeds 3 --threads 4 2>&1 | tail -n 60 | tee "$OUT/side_by_side.log"
tail -n +"$((before + 1))" benchmarks/RESULTS.md > "$OUT/results_rows.md"
