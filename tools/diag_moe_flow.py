"""Inside `check`'s own flow on a device: what our first MoE block and transformers' first
MLP block receive and return, and the same inputs through both modules on the CPU.

Builds the checkpoint `check` builds, loads transformers and our model on `--device` exactly
as `check_checkpoint` does (float64 round trip of the reference first), runs the 23-token
prefill on both with forward hooks on our `layers.<L>.moe` and transformers'
`model.layers.<L>.mlp` (and its router / experts), then prints:

  * the recorded inputs' layout (shape, strides, dtype, aliasing with the output);
  * our input vs transformers' input, our output vs transformers' output (on the device);
  * each side's module re-run on the CPU (a CPU load of the same checkpoint) on the recorded
    device input: which side's device output differs from its own CPU computation;
  * each side's device module re-run on a fresh contiguous copy of its input after the flow.

    python tools/diag_moe_flow.py specs/gpt_oss.yaml --device cuda
"""

from __future__ import annotations

import argparse
import os
import tempfile
from types import SimpleNamespace
from typing import Any

import torch

from minisgl_decl.parity.capture import recording
from minisgl_decl.parity.check import Inputs
from minisgl_decl.parity.hf_reference import build_reference, load_reference
from minisgl_decl.parity.run import KV_SLOTS, float64_reference
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.runtime.runner import ModelRunner
from minisgl_decl.spec.compile import load_ir

NO_COMM = SimpleNamespace(comm=SimpleNamespace(all_reduce=lambda t: t))


def layout(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)} strides {t.stride()} {t.dtype} contiguous {t.is_contiguous()}"


def gap(a: torch.Tensor, b: torch.Tensor) -> str:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape:
        return f"shapes differ {tuple(a.shape)} vs {tuple(b.shape)}"
    return f"max|Δ| {(a - b).abs().max().item():.3e} (max |a| {a.abs().max().item():.3e})"


class Hook:
    """Records the first call's positional inputs and output of a module (clones)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.args: tuple[Any, ...] | None = None
        self.out: Any = None
        self.raw_in: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m: Any, args: tuple[Any, ...], out: Any) -> None:
        if self.args is not None:
            return

        def c(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return v.detach().clone()
            if isinstance(v, (tuple, list)):
                return type(v)(c(x) for x in v)
            return v

        self.raw_in = args[0] if isinstance(args[0], torch.Tensor) else None
        self.args, self.out = c(args), c(out)
        if self.raw_in is not None:
            o = out if isinstance(out, torch.Tensor) else out[0]
            print(
                f"    input {layout(self.raw_in)}; output {layout(o)}; same storage as output: "
                f"{self.raw_in.untyped_storage().data_ptr() == o.untyped_storage().data_ptr()}"
            )

    def remove(self) -> None:
        self.handle.remove()


def walk(ours: Any, ours_cpu: Any, hf: Any, hf_cpu: Any, seq: list[int], dev: str) -> None:
    """Every module of ours (and of transformers) on `dev` vs the CPU, same tokens, in call order:
    the first module whose device output leaves its CPU output locates a device-only divergence."""
    for label, backend in (("kernels auto", None), ("MINISGL_KERNELS_BACKEND=torch", "torch")):
        if backend is not None:
            os.environ["MINISGL_KERNELS_BACKEND"] = backend
        recs = []
        for model in (ours, ours_cpu):
            d = str(next(model.parameters()).device)
            with recording(model._paths, fused=True) as rec, torch.inference_mode():
                ModelRunner(model, KV_SLOTS, device=d).extend({0: seq}, all_logits=True)
            recs.append(rec.calls)
        os.environ.pop("MINISGL_KERNELS_BACKEND", None)
        print_differences(f"ours, {dev} vs cpu, every module ({label})", recs[0], recs[1], with_layout=True)
    names = {n: m for n, m in hf.named_modules() if n}
    names_cpu = dict(hf_cpu.named_modules())
    recs = []
    for model, mods, d in ((hf, names, dev), (hf_cpu, {n: names_cpu[n] for n in names}, "cpu")):
        with recording(mods) as rec, torch.inference_mode():
            model(torch.tensor([seq], device=d), use_cache=False)
        recs.append(rec.calls)
    print_differences(f"transformers, {dev} vs cpu, every module", recs[0], recs[1], with_layout=False)


def print_differences(title: str, device_calls: dict, cpu_calls: dict, with_layout: bool) -> None:
    """The first 6 recorded module outputs that differ by > 1e-5 relative between the two runs."""
    print(f"{title}; first 6 that differ by > 1e-5 relative:")
    shown = 0
    for name, calls in device_calls.items():
        for k, (a, b) in enumerate(zip(calls, cpu_calls.get(name, []), strict=False)):
            a, b = a.float().cpu(), b.float().cpu()
            if a.shape != b.shape:
                continue
            d = (a - b).abs().max().item()
            scale = max(b.abs().max().item(), 1e-30)
            if d / scale > 1e-5 and shown < 6:
                extra = f" {layout(a)}" if with_layout else ""
                print(f"  {name} call {k}: max|Δ| {d:.3e} (relative {d / scale:.1e}){extra}")
                shown += 1
    if not shown:
        print("  none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("spec")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layer", type=int, default=0)
    args = ap.parse_args()
    dev, L = args.device, args.layer
    spec = load_ir(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        build_reference(spec, None, seed=0, directory=tmp)
        compiled = compile_spec(spec, tmp)
        arch = (compiled.checkpoint.config.get("architectures") or spec.architectures)[0]  # type: ignore[union-attr]
        hf = load_reference(tmp, arch).to(dev)
        vocab = int(hf.config.get_text_config().vocab_size)
        float64_reference(hf, vocab, 0, dev)  # as check does, before our model
        ours = load_model(compiled, device=dev)
        hf_cpu = load_reference(tmp, arch)
        ours_cpu = load_model(compiled, device="cpu")
        seq = Inputs.draw(vocab, 0).seq

        our_moe = ours.module(f"layers.{L}.moe")
        hf_mlp = hf.model.layers[L].mlp
        print(
            f"experts implementation: {getattr(hf.config, '_experts_implementation', None)}; "
            f"hf mlp class {type(hf_mlp).__name__}, forward {getattr(type(hf_mlp).forward, '__qualname__', '?')}; "
            f"experts forward {getattr(hf_mlp.experts.forward, '__qualname__', '?')}"
        )
        print("ours, in the flow:")
        h_ours = Hook(our_moe)
        print("transformers, in the flow:")
        h_hf, h_router, h_experts = Hook(hf_mlp), Hook(hf_mlp.router), Hook(hf_mlp.experts)
        with torch.inference_mode():
            logits = ModelRunner(ours, KV_SLOTS, device=dev).extend({0: seq}, all_logits=True)[0]
            ref = hf(torch.tensor([seq], device=dev), use_cache=False).logits[0]
            logits_cpu = ModelRunner(ours_cpu, KV_SLOTS, device="cpu").extend({0: seq}, all_logits=True)[0]
            ref_cpu = hf_cpu(torch.tensor([seq]), use_cache=False).logits[0]
        for h in (h_ours, h_hf, h_router, h_experts):
            h.remove()
        print(f"logits: ours {dev} vs transformers {dev}: {gap(logits, ref)}")
        print(f"logits: ours cpu vs transformers cpu: {gap(logits_cpu, ref_cpu)}")
        print(
            f"logits: ours {dev} vs ours cpu: {gap(logits, logits_cpu)}; transformers {dev} vs cpu: {gap(ref, ref_cpu)}"
        )

        assert h_ours.args is not None and h_hf.args is not None and h_router.out is not None
        x_ours, y_ours = h_ours.args[0], h_ours.out
        x_hf = h_hf.args[0].reshape(-1, h_hf.args[0].shape[-1])
        y_hf = h_hf.out[0] if isinstance(h_hf.out, (tuple, list)) else h_hf.out
        y_hf = y_hf.reshape(-1, y_hf.shape[-1])
        print(f"MoE input  ours vs transformers ({dev}): {gap(x_ours, x_hf)}")
        print(f"MoE output ours vs transformers ({dev}): {gap(y_ours, y_hf)}")
        _, hf_scores, hf_idx = h_router.out
        w_ours, c_ours = our_moe.route(x_ours)
        same = bool((c_ours.sort(-1)[0] == hf_idx.sort(-1)[0]).all())
        print(
            f"routing ({dev}, ours on our input vs transformers' router): same experts {same}; "
            f"weights {gap(w_ours.gather(1, c_ours.sort(-1)[1]), hf_scores.gather(1, hf_idx.sort(-1)[1]))}"
        )

        cpu_moe = ours_cpu.module(f"layers.{L}.moe")
        cpu_mlp = hf_cpu.model.layers[L].mlp
        with torch.inference_mode():
            y_ours_cpu = cpu_moe(x_ours.cpu(), NO_COMM)
            y_hf_cpu = cpu_mlp(h_hf.args[0].cpu())[0].reshape(-1, x_hf.shape[-1])
            y_ours_again = our_moe(x_ours.clone().contiguous(), NO_COMM)
            y_hf_again = hf_mlp(h_hf.args[0].clone().contiguous())[0].reshape(-1, x_hf.shape[-1])
            y_cross = cpu_mlp(x_ours.cpu().reshape(h_hf.args[0].shape))[0].reshape(-1, x_hf.shape[-1])
            # transformers' experts on the CPU with its own device routing (isolates the experts)
            ex_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in h_experts.args]  # type: ignore[union-attr]
            y_ex_cpu = cpu_mlp.experts(*ex_args)
        print(f"ours:         {dev} flow output vs CPU module on the same input: {gap(y_ours, y_ours_cpu)}")
        print(f"transformers: {dev} flow output vs CPU module on the same input: {gap(y_hf, y_hf_cpu)}")
        print(f"ours:         {dev} flow output vs {dev} module re-run (contiguous copy): {gap(y_ours, y_ours_again)}")
        print(f"transformers: {dev} flow output vs {dev} module re-run (contiguous copy): {gap(y_hf, y_hf_again)}")
        print(f"transformers CPU mlp on OUR {dev} input vs our {dev} output: {gap(y_cross, y_ours)}")
        print(
            f"transformers experts: {dev} flow output vs CPU experts on the same routing: "
            f"{gap(h_experts.out, y_ex_cpu)}"
        )
        walk(ours, ours_cpu, hf, hf_cpu, seq, dev)


if __name__ == "__main__":
    main()
