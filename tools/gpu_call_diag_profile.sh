#!/bin/bash
# One device call (one GPU): gpt_oss check --device cuda diagnosis, then the engine decode-step
# profile at batch 1 on two real shapes. Writes under $OUT (or ./out). Run from the repo root:
#   bash tools/gpu_call_diag_profile.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MINISGL_KERNELS_AUTOTUNE=${MINISGL_KERNELS_AUTOTUNE:-0}
LOG=$OUT/call.log
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
  date -u
} 2>&1 | tee -a "$LOG"
echo "== diag_moe_flow gpt_oss cuda" | tee -a "$LOG"
timeout 200 python3 tools/diag_moe_flow.py specs/gpt_oss.yaml --device cuda 2>&1 | grep -v "Loading weights\|Writing model" | tee -a "$LOG"
for b in torch auto; do
  echo "== check gpt_oss --device cuda, MINISGL_KERNELS_BACKEND=$b" | tee -a "$LOG"
  MINISGL_KERNELS_BACKEND=$b timeout 150 python3 -m minisgl_decl.cli.main check specs/gpt_oss.yaml --device cuda 2>&1 | tail -12 | tee -a "$LOG"
done
for shape in ${SHAPES:-qwen3-0.6b llama3-8b}; do
  echo "== profile $shape batch 1 (overlap, graphs)" | tee -a "$LOG"
  timeout 260 python3 tools/profile_engine_step.py --device cuda --shape "$shape" --output-len 600 --steps 150 \
    --trace-steps 30 --max-running 8 --json "$OUT/prof_$shape.json" --trace "/tmp/trace_$shape.json" \
    > "/tmp/prof_$shape.log" 2>&1
  tail -4 "/tmp/prof_$shape.log" | tee -a "$LOG"
  cat "/tmp/prof_$shape.log" >> "$OUT/prof_logs.txt"
  gzip -c "/tmp/trace_$shape.json" > "$OUT/trace_$shape.json.gz" 2>/dev/null
done
date -u | tee -a "$LOG"
