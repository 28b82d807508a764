"""TP roles of catalogue parameters: which rows/columns of the full tensor each rank holds."""

from __future__ import annotations

import pytest

from minisgl_decl.catalogue.attention import AttentionArgs, qkv_segments
from minisgl_decl.catalogue.params import Segment, column, merged_column, replicated, row, vocab
from minisgl_decl.errors import UserError


def _owned(decl, tp: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """For each rank, the full-tensor indices along the sharded dim it holds (None = pad)."""
    size = decl.shape[decl.role.dim]
    out = []
    for rank in range(tp):
        idx: list[int] = []
        for a, b in decl.rank_pieces(tp, rank):
            idx += [i if i < size else -1 for i in range(a, b)]
        assert len(idx) == decl.local_shape(tp)[decl.role.dim]
        out.append(idx)
    return out


@pytest.mark.parametrize("tp", [1, 2, 3, 4, 6, 12])
def test_column_and_row_split_disjoint_and_cover(tp: int) -> None:
    for decl in (column("w", (12, 5), 12, 1), row("w", (5, 12), 12, 1), column("b", (12,), 12, 1)):
        owned = _owned(decl, tp)
        flat = [i for r in owned for i in r]
        assert sorted(flat) == list(range(12)), decl  # disjoint and covering
        assert all(r == sorted(r) and r == list(range(r[0], r[0] + len(r))) for r in owned)


def test_row_role_cuts_columns() -> None:
    decl = row("o", (7, 8), 4, 2)  # 4 heads x head_dim 2 along dim 1
    assert decl.local_shape(2) == (7, 4)
    assert decl.rank_pieces(2, 1) == [(4, 8)]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_merged_column_takes_the_same_share_of_each_segment(tp: int) -> None:
    ffn = 8
    decl = merged_column("gate_up", (2 * ffn, 3), (Segment("gate", ffn, 1), Segment("up", ffn, 1)), "merged_column")
    owned = _owned(decl, tp)
    assert sorted(i for r in owned for i in r) == list(range(2 * ffn))
    for rank, idx in enumerate(owned):
        n = ffn // tp
        assert idx == list(range(rank * n, rank * n + n)) + list(range(ffn + rank * n, ffn + rank * n + n))


def _qkv(heads: int, kv: int, hd: int = 2):  # type: ignore[no-untyped-def]
    args = AttentionArgs(hidden=4, heads=heads, kv_heads=kv, head_dim=hd)
    return merged_column("qkv", ((heads + 2 * kv) * hd, 4), qkv_segments(args), "qkv"), args


@pytest.mark.parametrize(
    ("heads", "kv", "tp"),
    [(8, 2, 1), (8, 2, 2), (8, 2, 4), (8, 2, 8), (8, 1, 4), (8, 8, 4), (4, 4, 2), (6, 3, 3), (8, 4, 8)],
)
def test_qkv_gqa_each_rank_gets_its_q_heads_and_their_kv_head(heads: int, kv: int, tp: int) -> None:
    """Rank r's q heads must sit with the kv heads they attend to (HF: q head h uses kv head h // group)."""
    hd = 2
    decl, _ = _qkv(heads, kv, hd)
    group = heads // kv
    q_local = heads // tp
    kv_local = max(1, kv // tp)
    owned = _owned(decl, tp)
    q_seen: list[int] = []
    kv_seen: list[int] = []
    for idx in owned:
        assert len(idx) == (q_local + 2 * kv_local) * hd
        q_rows, k_rows, v_rows = (
            idx[: q_local * hd],
            idx[q_local * hd : (q_local + kv_local) * hd],
            idx[(q_local + kv_local) * hd :],
        )
        q_heads = sorted({i // hd for i in q_rows})
        k_heads = sorted({(i - heads * hd) // hd for i in k_rows})
        v_heads = sorted({(i - (heads + kv) * hd) // hd for i in v_rows})
        assert k_heads == v_heads
        assert sorted({h // group for h in q_heads}) == k_heads  # the kv heads these q heads need, no other
        q_seen += q_heads
        kv_seen += k_heads
    assert sorted(q_seen) == list(range(heads))  # q heads split, disjoint, covering
    if tp > kv:  # each kv head replicated to tp / kv consecutive ranks
        assert kv_seen == [h for h in range(kv) for _ in range(tp // kv)]
    else:
        assert sorted(kv_seen) == list(range(kv))


@pytest.mark.parametrize(
    ("heads", "kv", "tp", "needle"),
    [
        (6, 2, 4, "tp=4 does not divide q heads (6)"),
        (6, 3, 2, "tp=2 does not divide kv heads (3)"),
        (12, 4, 6, "tp=6 is not a multiple of kv heads (4)"),
    ],
)
def test_tp_incompatible_with_heads_is_a_clear_error(heads: int, kv: int, tp: int, needle: str) -> None:
    decl, _ = _qkv(heads, kv)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        decl.check_tp(tp, "layers.0.attn")


@pytest.mark.parametrize(("size", "tp"), [(211, 1), (211, 2), (211, 4), (7, 4), (8, 4), (5, 8)])
def test_vocab_rows_split_and_tail_padded(size: int, tp: int) -> None:
    decl = vocab("embed", (size, 3), size)
    owned = _owned(decl, tp)
    per = -(-size // tp)
    assert all(len(r) == per for r in owned)
    real = [i for r in owned for i in r if i >= 0]
    assert real == list(range(size))  # in order, disjoint, covering
    assert sum(i < 0 for r in owned for i in r) == per * tp - size  # only the tail is padding
    decl.check_tp(tp, "embed")  # never an error


def test_replicated_is_whole_on_every_rank() -> None:
    decl = replicated("norm", (9,))
    assert decl.local_shape(4) == (9,)
    assert all(decl.rank_pieces(4, r) == [(0, 9)] for r in range(4))
