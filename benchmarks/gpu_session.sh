#!/usr/bin/env bash
# What only a GPU can show, as one device call that fits a 15-minute device budget with room to rerun (never run
# yet; sized for about 7 minutes after the machine has started):
#  1. the study's GPU-only code paths, each checked once through the project's functions (benchmarks/gpu_path.py,
#     about 2 minutes; on the CPU tests/test_gpu_path.py runs the same script, so it is known to work);
#  2. speed: the training step and eval forward at the study's resolution (fp32 and the fast mode, 6/100 and 3/50,
#     random data), peak CUDA memory, what bf16 changes on fixed weights, and the study's wall time extrapolated;
#  3. seeds sharing the GPU, one process each (bench_side_by_side.py: metrics against one after the other,
#     throughput).
#
# Before the call, here: the device machine (Python 3.12, torch 2.11) has no pycocotools, which the engine needs;
# carry its wheel in .whl/ (git-ignored):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.11
# Then, on the device machine from the repository root, with $OUT set (the device tool sets it), carrying .whl:
#     bash benchmarks/gpu_session.sh
# Everything comes back under $OUT (8 files; the tool returns at most 8): gpu.txt (the GPU, torch, gpu_path.py's
# verdicts), gpu_path.json, bench.log, bf16_diff.log, bench_step.py's JSON file, the rows it appended to RESULTS.md
# (results_rows.md: merge them into the local benchmarks/RESULTS.md by hand, naming the device) and
# study_estimate.txt and side_by_side.log.
#
# What the first GPU run must check, each a verdict in gpu_path.json (ok / FAILED / n/a):
# - device: resolve_device("auto") picks cuda, config device="cuda" reaches the run folder, whose
#   environment.jsonl names the GPU and its memory; the study's default DataLoader workers on that machine;
# - pinned_loader: build_loader pins memory on CUDA, a batch it yields is pinned, a non_blocking copy of it is
#   exact (the engine's .to(device, non_blocking=True));
# - run: epoch 0 and one trained epoch of the study's model (R50, random weights) at the study's sizes on the real
#   COCO sample, finite losses, through run_experiment;
# - peak_memory: every metrics row records peak_memory_mb, above 0 and below the GPU's memory (record the figure
#   for R50 at batch 2 in RESULTS.md: it says how many runs fit on one card);
# - tf32: an fp32 run computes without TF32 (PyTorch's default leaves it on for cuDNN convolutions). This needs the
#   runtime code (training/runtime.py set_tf32) that turns TF32 off for fp32 runs and records the flags in
#   environment.jsonl;
# - side_by_side: two runs at once on the one GPU, in two processes, both finish; their wall time against one run
#   alone and each one's peak memory (the budget for running the three variants side by side on one card).
set -euo pipefail
: "${OUT:?set OUT to a folder for the results}"
ls .whl/pycocotools-*.whl >/dev/null || { echo "carry .whl with the pycocotools wheel (see the top of this file)"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    | tee -a "$OUT/gpu.txt"
status=0
python3 benchmarks/gpu_path.py --device cuda --out /tmp/gpu_path 2>&1 | tee -a "$OUT/gpu.txt" || status=1
cp /tmp/gpu_path/gpu_path.json "$OUT/" || status=1
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
    --seeds 3 --threads 4 2>&1 | tail -n 60 | tee "$OUT/side_by_side.log" || status=1
tail -n +"$((before + 1))" benchmarks/RESULTS.md > "$OUT/results_rows.md"
exit "$status"  # 1: a gpu_path check or the side-by-side run failed (gpu.txt and side_by_side.log say which)
