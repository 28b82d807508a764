"""The batched CPU attention the engine relies on, against a float64 per-request computation.

Mixed steps send decodes as one-token extends (batched together in the reference); decode
steps reuse one layout for every layer (two different batches in a row must not mix).
"""

from __future__ import annotations

import pytest
import torch

from minisgl_kernels import reference
from minisgl_kernels.options import AttentionOptions


def naive(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, window: int | None, softcap: float | None
) -> torch.Tensor:
    """One request: q [n, Hq, D] at the last n positions of keys/values [L, Hkv, D]; float64."""
    n, hq, _ = q.shape
    length, hkv = keys.shape[0], keys.shape[1]
    out = torch.zeros(n, hq, q.shape[2], dtype=torch.float64)
    for i in range(n):
        p = length - n + i
        for h in range(hq):
            kh, vh = keys[:, h // (hq // hkv)].double(), values[:, h // (hq // hkv)].double()
            s = kh @ q[i, h].double() * scale
            if softcap is not None:
                s = softcap * torch.tanh(s / softcap)
            j = torch.arange(length)
            ok = j <= p
            if window is not None:
                ok &= j > p - window
            s[~ok] = float("-inf")
            out[i, h] = torch.softmax(s, 0) @ vh
    return out


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (4, None), (None, 3.0)])
def test_extend_with_many_one_token_requests(window: int | None, softcap: float | None) -> None:
    gen = torch.Generator().manual_seed(0)
    lens, prefix = [1, 1, 6, 1, 1], [5, 0, 3, 9, 2]
    hq, hkv, d, slots_total = 4, 2, 8, 40
    q = torch.randn(sum(lens), hq, d, generator=gen)
    k = torch.randn(sum(lens), hkv, d, generator=gen)
    v = torch.randn(sum(lens), hkv, d, generator=gen)
    kc, vc = torch.randn(slots_total, hkv, d, generator=gen), torch.randn(slots_total, hkv, d, generator=gen)
    slots = torch.randperm(slots_total, generator=gen)[: sum(prefix)]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    pi = torch.tensor([0, *torch.tensor(prefix).cumsum(0).tolist()])
    got = reference.extend_attention(q, k, v, cu, kc, vc, pi, slots, opts=AttentionOptions(0.4, window, softcap))
    for b in range(len(lens)):
        own = slots[pi[b] : pi[b + 1]]
        keys = torch.cat([kc[own], k[cu[b] : cu[b + 1]]])
        values = torch.cat([vc[own], v[cu[b] : cu[b + 1]]])
        want = naive(q[cu[b] : cu[b + 1]], keys, values, 0.4, window, softcap)
        torch.testing.assert_close(got[cu[b] : cu[b + 1]].double(), want, atol=1e-5, rtol=1e-5)


def test_decode_layouts_of_consecutive_batches_do_not_mix() -> None:
    gen = torch.Generator().manual_seed(1)
    kc, vc = torch.randn(30, 1, 8, generator=gen), torch.randn(30, 1, 8, generator=gen)
    q = torch.randn(2, 2, 8, generator=gen)
    for lens in ([3, 5], [7, 2], [7, 2]):
        slots = torch.randperm(30, generator=gen)[: sum(lens)]
        ip = torch.tensor([0, lens[0], sum(lens)])
        for _ in range(2):  # the second call reuses the layout of the first
            got = reference.decode_attention(q, kc, vc, ip, slots, opts=AttentionOptions(0.3))
            for b in range(2):
                own = slots[ip[b] : ip[b + 1]]
                want = naive(q[b : b + 1], kc[own], vc[own], 0.3, None, None)
                torch.testing.assert_close(got[b : b + 1].double(), want, atol=1e-5, rtol=1e-5)
