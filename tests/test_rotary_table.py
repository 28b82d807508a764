"""The catalogue's rotary module: one cos/sin table per model, used on CPU too."""

from __future__ import annotations

import torch

from minisgl_decl.catalogue.rotary import DEFAULT_TABLE_POSITIONS, Rotary
from minisgl_decl.config.rope import RopeConfig


def test_layers_share_one_table_and_rows_follow_max_position() -> None:
    rope = RopeConfig(type="default", theta=10000.0, max_position=300)
    a, b = Rotary(rope, 64), Rotary(rope, 64)
    assert a.cos_sin is b.cos_sin and a.cos_sin.shape == (300, 64)
    assert Rotary(rope, 32).cos_sin is not a.cos_sin
    assert Rotary(RopeConfig(type="default", theta=10000.0), 64).cos_sin.shape[0] == DEFAULT_TABLE_POSITIONS


def test_rotary_matches_hf_rotate_half_including_positions_past_the_table() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rope = RopeConfig(type="default", theta=10000.0, max_position=16, partial_rotary_factor=0.5)
    mod = Rotary(rope, 32)  # rotary_dim 16
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 3, 32, generator=gen), torch.randn(5, 1, 32, generator=gen)
    pos = torch.tensor([0, 4, 15, 16, 40])  # the last two are past the 16-row table
    freqs = pos.float()[:, None] * mod.inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    rot_q, rot_k = apply_rotary_pos_emb(
        q[..., :16].transpose(0, 1), k[..., :16].transpose(0, 1), emb.cos(), emb.sin(), unsqueeze_dim=0
    )
    gq, gk = q.clone(), k.clone()
    mod(gq, gk, pos)
    torch.testing.assert_close(gq[..., :16], rot_q.transpose(0, 1), atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(gk[..., :16], rot_k.transpose(0, 1), atol=2e-6, rtol=1e-6)
    assert torch.equal(gq[..., 16:], q[..., 16:]) and torch.equal(gk[..., 16:], k[..., 16:])
