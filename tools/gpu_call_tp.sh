#!/bin/bash
# One device call on 2 GPUs of one host: gpt_oss check with a transformers that honours its
# config (and the refusal with the image's), a few other specs; the one-shot P2P all-reduce's
# latency vs NCCL and its -m gpu tests; TP=1 vs TP=2 batch-1 decode through `serve`.
# Run from the repo root (wheels of transformers >= 5.19 in .tfwhl/ when the image's is older):
#   bash tools/gpu_call_tp.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MINISGL_KERNELS_AUTOTUNE=${MINISGL_KERNELS_AUTOTUNE:-0}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
LOG=$OUT/call.log
say() { echo "== $*" | tee -a "$LOG"; }
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  nvidia-smi topo -m | head -4
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'nccl', torch.cuda.nccl.version(), 'peer 0<->1', torch.cuda.can_device_access_peer(0, 1))"
  date -u
} 2>&1 | tee -a "$LOG"
if [ -d .tfwhl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tf .tfwhl/*.whl
fi
say "check gpt_oss, image's transformers (expect the refusal)"
timeout 60 python3 -m minisgl_decl.cli.main check specs/gpt_oss.yaml --device cuda 2>&1 | tail -3 | tee -a "$LOG"
for spec in gpt_oss llama qwen3_moe; do
  say "check $spec --device cuda with transformers from .tfwhl"
  PYTHONPATH=/tmp/tf:$PYTHONPATH timeout 90 python3 -m minisgl_decl.cli.main check specs/$spec.yaml --device cuda 2>&1 | tail -7 | tee -a "$LOG"
done
say "all-reduce latency, NCCL vs one-shot P2P"
timeout 100 python3 tools/diag_allreduce.py --json "$OUT/allreduce.json" 2>&1 | tail -14 | tee -a "$LOG"
say "pytest -m gpu tests/test_p2p_allreduce_gpu.py"
timeout 150 python3 -m pytest -q -m gpu tests/test_p2p_allreduce_gpu.py -x 2>&1 | tail -6 | tee -a "$LOG"
say "serve TP=1 vs TP=2 batch 1 (llama3-8b)"
timeout ${TP_TIMEOUT:-300} python3 tools/bench_serve_tp.py --tp 2 --shape llama3-8b --text-dtypes "" --concurrent 0 \
  --p2p-row --b1-requests 3 > /tmp/tp.log 2>&1
tail -12 /tmp/tp.log | tee -a "$LOG"
cp /tmp/tp.log "$OUT/bench_serve_tp.log"
date -u | tee -a "$LOG"
