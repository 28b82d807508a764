"""Sort (token, k) pairs by expert on the device, in blocks of one expert each.

Plain torch ops with shapes known on the host: nothing reads device data back, so the
step never synchronises and can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from minisgl_kernels._util import cdiv


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound on the blocks: each used expert pads its pairs to a multiple of block_m."""
    return cdiv(num_pairs + min(num_experts, num_pairs) * (block_m - 1), block_m)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sorted_pairs [blocks * block_m], block_expert [blocks])`` for ``topk_ids [T, top_k]``.

    Pair ``p = t * top_k + j`` (token t's j-th choice). Block b holds
    ``sorted_pairs[b*block_m : (b+1)*block_m]``, pairs routed to expert ``block_expert[b]``
    in increasing pair order, padded with the sentinel ``num_pairs``; unused trailing
    blocks have ``block_expert == num_experts``.
    """
    flat = topk_ids.reshape(-1)
    num_pairs = flat.numel()
    dev = flat.device
    blocks = max_blocks(num_pairs, num_experts, block_m)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, flat.long(), torch.ones(num_pairs, dtype=torch.int64, device=dev))
    padded_end = torch.cumsum((counts + block_m - 1) // block_m * block_m, 0)
    padded_start = padded_end - (counts + block_m - 1) // block_m * block_m
    count_start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order].long()
    dest = padded_start[expert_of] + torch.arange(num_pairs, device=dev) - count_start[expert_of]
    sorted_pairs = torch.full((blocks * block_m,), num_pairs, dtype=torch.int32, device=dev)
    sorted_pairs.scatter_(0, dest, order.to(torch.int32))
    block_starts = torch.arange(blocks, device=dev) * block_m
    block_expert = torch.searchsorted(padded_end, block_starts, right=True).to(torch.int32)
    return sorted_pairs, block_expert
