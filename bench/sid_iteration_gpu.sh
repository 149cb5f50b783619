#!/usr/bin/env bash
# The trainer's GPU figures in one go: bench/sid_iteration.py on real-size, random-weight SANA-1.6B (512 px latent
# grid, micro-batch 8) and SD3-Medium (1024 px, micro-batch 2), each in AMP and in pure bf16, one micro-batch per
# iteration, with the caching allocator's expandable segments as `sidrepro distill` sets them; SANA-1.6B in AMP also
# with fixed segments (new cudaMalloc calls in steady state, since the phases' block sizes differ). Each run appends
# a JSON line to OUT/sid_iteration.jsonl; a run that fails or times out does not stop the next. SD3-Medium in AMP
# needs about 70 GB on one GPU (memory model): an 80 GB card may run short.
#
#   bash bench/sid_iteration_gpu.sh OUT [extra sid_iteration.py arguments]
#
# TEACHERS="sana-1.6b" limits the runs to those teachers; PROFILE=1 adds a short SANA-1.6B AMP run under
# torch.profiler (its operator tables by device and by host time in OUT/profile_sana_amp.txt).
set -u
out=${1:?usage: bench/sid_iteration_gpu.sh OUT [args]}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
run() {  # LIMIT_S ALLOC_CONF ARGS...
    local limit=$1 alloc=$2
    shift 2
    echo "== $* ${alloc:+(PYTORCH_CUDA_ALLOC_CONF=$alloc)}"
    env ${alloc:+PYTORCH_CUDA_ALLOC_CONF=$alloc} timeout "$limit" "$py" bench/sid_iteration.py --real-size --iters 10 \
        --repeats 5 --json "$out/sid_iteration.jsonl" "$@" 2>&1 | grep -v -E "Loading|it/s\]|should be kept in float32"
    echo "   (exit ${PIPESTATUS[0]})"
}
teachers=" ${TEACHERS:-sana-1.6b sd3-medium} "
if [[ $teachers == *" sana-1.6b "* ]]; then
    run 150 "" --teacher sana-1.6b --set batch=8 "$@"
    run 150 "expandable_segments:False" --teacher sana-1.6b --set batch=8 "$@"
    run 120 "" --teacher sana-1.6b --set batch=8 --set precision=bf16 "$@"
fi
if [[ $teachers == *" sd3-medium "* ]]; then
    run 200 "" --teacher sd3-medium --set batch=2 "$@"
    run 150 "" --teacher sd3-medium --set batch=2 --set precision=bf16 "$@"
fi
if [[ ${PROFILE:-0} == 1 ]]; then
    run 150 "" --teacher sana-1.6b --set batch=8 --profile "$out/profile_sana_amp.txt" "$@" --iters 5 --repeats 1
fi
