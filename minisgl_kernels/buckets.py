"""The launch-time rules that decide which compiled / autotuned kernel variant a launch uses.

Host integers only (no Triton import): the launchers use these to pick autotune keys and
block sizes, and the engine's start-up warm-up (`minisgl_decl/runtime/warmup.py`) uses the
same functions to run one launch of every variant a real step can hit before serving, so
no request pays for a compile or an autotuning sweep.

- extend attention is autotuned per `seq_bucket(max_seqlen_q)`;
- the fused-MoE GEMMs per `(block_m_for(pairs, experts), pairs_bucket(pairs))`;
- split-KV decode per `default_num_splits(batch, kv_heads, device)`;
- a linear layer's product of up to 16 rows chooses (timed, once) between the Triton GEMV
  and cuBLAS and autotunes the GEMV per `gemv_bucket(rows)` (`gemv_choice.py`);
- and Triton compiles every `@triton.jit` kernel once per `int_class` of each integer
  argument (1, a multiple of 16, anything else), e.g. a kernel's row count.
"""

from __future__ import annotations

import torch

from minisgl_kernels._util import cdiv, interpreting, next_pow2, sm_count
from minisgl_kernels.gemv_choice import MAX_ROWS as GEMV_MAX_ROWS
from minisgl_kernels.gemv_choice import rows_bucket

SEQ_BUCKET_MAX = 4096  # extend attention: longer query runs share the last bucket
PAIRS_BUCKET_MAX = 16384  # fused MoE: more (token, expert) pairs share the last bucket
MAX_SPLITS = 64  # split-KV decode: most splits per request


def seq_bucket(max_seqlen_q: int) -> int:
    """The extend-attention autotune bucket of a step whose longest query run is `max_seqlen_q`."""
    return min(next_pow2(max_seqlen_q), SEQ_BUCKET_MAX)


def pairs_bucket(num_pairs: int) -> int:
    """The fused-MoE autotune bucket of `num_pairs` (token, chosen expert) pairs."""
    return min(next_pow2(num_pairs), PAIRS_BUCKET_MAX)


def block_m_for(num_pairs: int, num_experts: int) -> int:
    """Fused-MoE rows per block from the mean pairs per used expert (host numbers only)."""
    mean = num_pairs / max(1, min(num_experts, num_pairs))
    if interpreting() or mean <= 16:
        return 16
    return 32 if mean <= 48 else 64


def default_num_splits(batch: int, num_kv_heads: int, device: torch.device) -> int:
    """Splits so that (KV head, request, split) programs fill the GPU: about one per
    multiprocessor when the batch alone gives many, two when it gives few (measured on
    H100: B=32 x 4 KV heads is best at 2 splits, B=1 x 4 at 64). Host data only."""
    sms, programs = sm_count(device), batch * num_kv_heads
    target = sms if 4 * programs >= sms else 2 * sms
    return max(1, min(MAX_SPLITS, cdiv(target, programs)))


def gemv_bucket(rows: int) -> int | None:
    """The GEMV rows bucket of a linear layer's product of `rows` rows (None: more rows than the
    GEMV takes, always cuBLAS)."""
    return rows_bucket(rows) if rows <= GEMV_MAX_ROWS else None


def int_class(n: int) -> str:
    """How Triton specialises an integer kernel argument: "1", "16" (divisible by 16) or ""
    (anything else); each class of each argument is compiled separately."""
    if n == 1:
        return "1"
    return "16" if n % 16 == 0 else ""
