#!/usr/bin/env bash
# Every check only a GPU can show, as one prepared run that fits a short lease:
#   tools/gpu_checks.sh tests          the CUDA tests (ATS modes on CUDA, accounting, autocast), ~2 minutes
#   tools/gpu_checks.sh static         bench_ats, static mode, eager and compiled: TimeSformer and DeiT-S rows
#   tools/gpu_checks.sh static-xvit    the same for X-ViT, every variant (a call of its own: each compile takes
#                                      a minute or two, and one command gets at most 10 minutes)
#   tools/gpu_checks.sh trim           bench_ats, trim mode, eager (one device read per stage)
#   tools/gpu_checks.sh sampler        bench_ats, trim mode, each stage compiled (ATS.SAMPLER compiled)
#   tools/gpu_checks.sh reducers       bench_ats, trim mode: ATS, top-k, random, EViT and ToMe at the same blocks and
#                                      budget (TimeSformer tube), EViT and ToMe at their DeiT-S settings; then
#                                      `videoats compare` on the embedded benchmark (wall clock next to GFLOPs)
# Results go to $OUT (or ./gpu_out): logs and one JSON line per bench_ats run. Python packages missing on
# the GPU machine (fvcore and its needs, av, decord) travel as wheels in .whl (see the device README).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

bench() {  # one JSON line per run, the table on stderr for the log
    python3 tools/bench_ats.py --device cuda --dtype bf16 --repeats 10 --warmup 3 --json "$@" >> "$out/bench.jsonl" \
        2>> "$out/bench.err" || echo "failed: $*" | tee -a "$out/bench.err"
}

case "${1:-tests}" in
    tests)
        python3 -m pytest -q -rs -k "cuda or autocast" tests/test_static.py tests/test_defects.py \
            tests/test_inference_runtime.py tests/test_compiled_sampler.py 2>&1 | tee "$out/cuda_tests.log"
        ;;
    static)
        for v in tube frame joint; do
            bench --model timesformer_8x224 --variant "$v" --mode static --compile --batch-sizes 1,32
        done
        bench --model deit_small_patch16_224 --mode static --compile --batch-sizes 1,256
        ;;
    static-xvit)
        for v in tube frame joint; do
            bench --model xvit_b16_16x224 --variant "$v" --mode static --compile --batch-sizes 16
        done
        ;;
    trim)
        for v in tube frame joint; do
            bench --model timesformer_8x224 --variant "$v" --mode trim --batch-sizes 1,8,32
        done
        bench --model deit_small_patch16_224 --mode trim --batch-sizes 1,64,256
        ;;
    sampler)
        for v in tube frame joint; do
            bench --model timesformer_8x224 --variant "$v" --mode trim --sampler compiled --batch-sizes 1,8,32
        done
        bench --model deit_small_patch16_224 --mode trim --sampler compiled --batch-sizes 1,64,256
        ;;
    reducers)
        for s in inverse_transform top_k random evit tome; do
            bench --model timesformer_8x224 --variant tube --mode trim --selection "$s" --batch-sizes 1,8,32
        done
        bench --model deit_small_patch16_224 --mode trim --selection evit --blocks 3,6,9 --tokens 0.7 \
            --batch-sizes 1,64,256
        bench --model deit_small_patch16_224 --mode trim --selection tome --blocks 0,1,2,3,4,5,6,7,8,9,10,11 \
            --tokens 184,171,158,145,132,119,106,93,80,67,54,41 --batch-sizes 1,64,256
        python3 -m videoats.cli compare --budgets 0.3,0.5,0.7 --seeds 0 --output "$out/compare" \
            > "$out/compare.txt" 2>&1 || echo "failed: compare" | tee -a "$out/bench.err"
        ;;
    *)
        echo "usage: tools/gpu_checks.sh tests|static|static-xvit|trim|sampler|reducers" >&2
        exit 2
        ;;
esac
