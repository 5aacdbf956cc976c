#!/usr/bin/env bash
# The GPU targets in one call of a lent GPU machine (at most 560 s of steps), most wanted first, each under its own
# timeout so one slow step leaves the rest their time:
#   1. cifar10-gpu (10 epochs) on the CIFAR-10 JPEG copy, twice: the first run decodes the images into the decoded
#      cache, the second is the warm-cache figure (test top-1 and the whole command's seconds);
#   2. the ResNet-50 recipe's training throughput against a plain eager PyTorch loop (benchmarks/speed_vs_plain.py);
#   3. two epochs each of cifar10-resnet50 and cifar10-preact-resnet56: seconds an epoch, against their targets of
#      60 and 100 epochs in 10 minutes.
# The data does not travel with the checkout (../shared stays here), so pack it first, on this machine:
#     bash benchmarks/gpu_checks.sh pack        # .gpu/cifar10-jpeg.tar.gz (~20 MB; .gpu/ is git-ignored)
# then run it there (the device tool: carry [".gpu"], timeout_s 590):
#     bash benchmarks/gpu_checks.sh run
# Each step records its figures in benchmarks/results/ and copies them to $OUT (what comes back) as soon as it ends,
# so a call cut off at its limit still brings back what was measured; the log goes there too.
# The test split there is the 1,000-image subset: the 10,000-image figure is measured elsewhere.
# GPU_CHECKS_EXTRA="key=value ..." adds overrides to every run; a CPU dry run of the plumbing sets it to
# train.max_steps=2, with GPU_CHECKS_RESULTS, GPU_CHECKS_PACK, GPU_CHECKS_DATA, SHARED and OUT pointing at a scratch folder.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=${GPU_CHECKS_PACK:-.gpu/cifar10-jpeg.tar.gz}
SHARED=${SHARED:-../shared/data}
DATA=${GPU_CHECKS_DATA:-/tmp/resnetlab-gpu-data}
OUT=${OUT:-/tmp/resnetlab-gpu-out}
RESULTS=${GPU_CHECKS_RESULTS:-benchmarks/results}  # another folder for a dry run
PY=${PYTHON:-python3}
read -r -a EXTRA <<< "${GPU_CHECKS_EXTRA:-}"  # split on spaces: write lists without them, [8,16]

pack() {
    mkdir -p .gpu
    tar czf "$PACK" -C "$SHARED" cifar10-jpeg-full/train cifar10-jpeg/test
    ls -l "$PACK"
}

step() {  # step SECONDS NAME COMMAND...: one measurement, its output in the log, its exit status noted
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%T), at most ${limit} s)" | tee -a "$OUT/gpu_checks.log"
    PYTHONPATH=src PYTHONUNBUFFERED=1 timeout "$limit" "$@" 2>&1 | tee -a "$OUT/gpu_checks.log" | tail -n 25
    echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_checks.log"
    comm -13 "$BEFORE" <(ls "$RESULTS") | while read -r f; do cp "$RESULTS/$f" "$OUT/"; done
}

run() {
    mkdir -p "$OUT" "$DATA"
    BEFORE=$(mktemp)
    mkdir -p "$RESULTS"
    ls "$RESULTS" > "$BEFORE"
    tar xzf "$PACK" -C "$DATA" || { echo "no $PACK: run 'bash benchmarks/gpu_checks.sh pack' here first"; exit 1; }
    mkdir -p "$DATA/cifar10"  # train: all 50,000; test: the 1,000-image subset
    ln -sfn "$DATA/cifar10-jpeg-full/train" "$DATA/cifar10/train"
    ln -sfn "$DATA/cifar10-jpeg/test" "$DATA/cifar10/test"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu_checks.log"
    local cache=$DATA/cache
    rm -rf "$cache"  # the first run is cold on a machine still warm from an earlier call too
    step 150 "cifar10-gpu, first run (decodes the JPEGs)" "$PY" benchmarks/recipe_run.py cifar10-gpu \
        "data.dataset=$DATA/cifar10" "data.cache_dir=$cache" train.progress=false ${EXTRA[@]+"${EXTRA[@]}"} \
        --name cifar10-gpu-jpeg-copy-cold --results "$RESULTS"
    step 90 "cifar10-gpu, warm cache" "$PY" benchmarks/recipe_run.py cifar10-gpu \
        "data.dataset=$DATA/cifar10" "data.cache_dir=$cache" train.progress=false ${EXTRA[@]+"${EXTRA[@]}"} \
        --name cifar10-gpu-jpeg-copy --results "$RESULTS"
    step 150 "ResNet-50 against a plain eager loop (same bf16 arithmetic)" "$PY" benchmarks/speed_vs_plain.py \
        --data "$DATA/cifar10" --epochs 2 --batch-size 128 --workers 12 --model cifar_resnet50 --plain-amp \
        ${EXTRA[@]+"${EXTRA[@]}"} --record --results "$RESULTS"
    for recipe in cifar10-resnet50 cifar10-preact-resnet56; do
        step 85 "$recipe, 2 epochs" "$PY" benchmarks/recipe_run.py "$recipe" "data.dataset=$DATA/cifar10" \
            "data.cache_dir=$cache" train.epochs=2 train.progress=false ${EXTRA[@]+"${EXTRA[@]}"} --name "$recipe-2-epochs" \
            --results "$RESULTS"
    done
    ls "$OUT"
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    *) echo "usage: bash benchmarks/gpu_checks.sh pack|run" >&2; exit 2 ;;
esac
