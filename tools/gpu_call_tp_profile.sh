#!/bin/bash
# One device call on 2 GPUs: where a batch-1 decode step goes at TP=1 and TP=2 (llama3-8b,
# random weights): tools/profile_engine_step.py on rank 0 (engine) and rank 1 (worker loop),
# TP=2 with the one-shot P2P all-reduce and with NCCL alone. Run from the repo root:
#   bash tools/gpu_call_tp_profile.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MINISGL_KERNELS_AUTOTUNE=${MINISGL_KERNELS_AUTOTUNE:-0}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SHAPE=${SHAPE:-llama3-8b}
LOG=$OUT/call.log
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u; } 2>&1 | tee -a "$LOG"
CK=/tmp/ck-$SHAPE
python3 -c "
import sys; sys.path.insert(0, 'tools')
from pathlib import Path
from bench_shapes import build_checkpoint
build_checkpoint('$SHAPE', Path('$CK'))" 2>&1 | tail -2
COMMON="--device cuda --shape $SHAPE --model $CK --output-len 400 --steps 100 --trace-steps 30 --max-running 8"
run() {  # name, extra args, env
  echo "== $1" | tee -a "$LOG"
  env $3 timeout 150 python3 tools/profile_engine_step.py $COMMON $2 --json "/tmp/$1.json" > "/tmp/$1.log" 2>&1
  grep -E "^(NVIDIA|rank|tp:)" "/tmp/$1.log" | tee -a "$LOG"
  cp /tmp/$1.json* "$OUT/" 2>/dev/null
}
run tp1 "" ""
run tp2_p2p "--tp 2" "MINISGL_P2P_ALLREDUCE_MAX_BYTES=1048576"
run tp2_nccl "--tp 2" "MINISGL_P2P_ALLREDUCE_MAX_BYTES=0"
cat /tmp/tp2_p2p.log | tail -80 > "$OUT/tp2_p2p.log"
date -u | tee -a "$LOG"
