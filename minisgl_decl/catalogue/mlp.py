"""Feed-forward blocks: gated (SwiGLU/GeGLU) and plain two-layer MLPs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import PositiveInt
from torch import nn
from torch.nn import functional as F

import minisgl_kernels as kernels

from ..errors import UserError
from .context import ForwardBatch
from .params import ParamDecl, Segment, column, merged_column, replicated, row
from .registry import LayerArgs, LayerKind
from .shard import Shard
from .tp_linear import ColumnLinear, RowLinear

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
}


#: activation name -> the name the fused kernels (`kernels.act_and_mul`, `kernels.fused_moe`) use
KERNEL_ACTIVATIONS: dict[str, str] = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


def kernel_activation(name: str) -> str:
    activation(name)  # the same error for an unknown name
    return KERNEL_ACTIVATIONS[name]


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise UserError(f"activation `{name}` is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


class GatedMLPArgs(LayerArgs):
    dim: PositiveInt
    ffn: PositiveInt
    act: str = "silu"
    bias: bool = False


class GatedMLPModule(nn.Module):
    def __init__(self, args: GatedMLPArgs, shard: Shard) -> None:
        super().__init__()
        self.split = list(shard.split("gate_up.weight"))  # local gate rows, local up rows
        self.act = kernel_activation(args.act)
        self.gate_up = ColumnLinear()
        self.down = RowLinear()

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        return self.down(kernels.act_and_mul(self.gate_up(x), self.act), ctx.comm)  # act(gate) * up, one pass


class GatedMLP(LayerKind):
    name = "gated_mlp"
    summary = "down(act(gate(x)) * up(x)) with gate|up fused and merged-column parallel"
    Args = GatedMLPArgs

    def params(self, args: GatedMLPArgs) -> list[ParamDecl]:
        activation(args.act)
        segs = (Segment("gate rows", args.ffn, 1), Segment("up rows", args.ffn, 1))
        return [
            merged_column("gate_up.weight", (2 * args.ffn, args.dim), segs, "merged_column"),
            merged_column("gate_up.bias", (2 * args.ffn,), segs, "merged_column").when(args.bias),
            row("down.weight", (args.dim, args.ffn), args.ffn, 1),
            replicated("down.bias", (args.dim,)).when(args.bias),
        ]

    def module(self, args: GatedMLPArgs, shard: Shard) -> nn.Module:
        return GatedMLPModule(args, shard)


class MLPArgs(LayerArgs):
    dim: PositiveInt
    ffn: PositiveInt
    act: str = "gelu"
    bias: bool = True


class MLPModule(nn.Module):
    def __init__(self, args: MLPArgs) -> None:
        super().__init__()
        self.act = activation(args.act)
        self.up = ColumnLinear()
        self.down = RowLinear()

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        return self.down(self.act(self.up(x)), ctx.comm)


class MLP(LayerKind):
    name = "mlp"
    summary = "down(act(up(x))), column- then row-parallel"
    Args = MLPArgs

    def params(self, args: MLPArgs) -> list[ParamDecl]:
        activation(args.act)
        return [
            column("up.weight", (args.ffn, args.dim), args.ffn, 1),
            column("up.bias", (args.ffn,), args.ffn, 1).when(args.bias),
            row("down.weight", (args.dim, args.ffn), args.ffn, 1),
            replicated("down.bias", (args.dim,)).when(args.bias),
        ]

    def module(self, args: MLPArgs, shard: Shard) -> nn.Module:
        return MLPModule(args)
