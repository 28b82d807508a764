"""Does a spec's tiny random model behave the same on CPU and CUDA? Compares, on the
checkpoint `check` would build: our loaded parameters (CPU vs CUDA, exact) and
transformers' logits (CPU vs CUDA) on the same tokens. Locates device-dependent
divergences on either side without trusting the other.

    python tools/diag_device_parity.py specs/gpt_oss.yaml
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from types import SimpleNamespace
from typing import Any

import torch

import minisgl_kernels as kernels
from minisgl_decl.parity.hf_reference import as_float64, build_reference, load_reference
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.spec.compile import load_ir


def routed_layers(compiled: Any, device: str) -> None:
    """Each routed-expert module (one with `route`) on the same random rows, CPU vs `device`."""
    no_comm = SimpleNamespace(comm=SimpleNamespace(all_reduce=lambda t: t))
    models = {d: load_model(compiled, device=d) for d in ("cpu", device)}
    for name, mod in models["cpu"].named_modules():
        if not hasattr(mod, "route"):
            continue
        other = dict(models[device].named_modules())[name]
        x = torch.randn(7, mod.gate_up.shape[2], generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            w0, c0 = mod.route(x)
            w1, c1 = other.route(x.to(device))
            y0, y1 = mod(x, no_comm), other(x.to(device), no_comm)
            ref = kernels.fused_moe
            kernels.fused_moe = functools.partial(ref, backend="torch")
            try:
                y2 = other(x.to(device), no_comm)
            finally:
                kernels.fused_moe = ref
        same_ids = bool((c0.sort(-1)[0] == c1.cpu().sort(-1)[0]).all())
        dw = (w0.sort(-1)[0] - w1.cpu().sort(-1)[0]).abs().max()
        dy, dy_torch = (y0 - y1.cpu()).abs().max(), (y0 - y2.cpu()).abs().max()
        print(f"{name}: same experts {same_ids}, weights max|Δ| {dw:.3e}, output max|Δ| {dy:.3e}")
        print(f"  (the torch experts on {device}: output max|Δ| {dy_torch:.3e})")
        break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("spec")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    spec = load_ir(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        build_reference(spec, None, seed=0, directory=tmp)
        compiled = compile_spec(spec, tmp)
        ours = {d: dict(load_model(compiled, device=d).named_parameters()) for d in ("cpu", args.device)}
        on = ours[args.device]
        gaps = {n: (p.detach().cpu() - on[n].detach().cpu()).abs().max().item() for n, p in ours["cpu"].items()}
        worst = max(gaps.items(), key=lambda t: t[1])
        print(f"ours, loaded parameters cpu vs {args.device}: worst {worst[0]} max|Δ| = {worst[1]:.3e}")
        routed_layers(compiled, args.device)
        arch = compiled.checkpoint.config.get("architectures") or spec.architectures  # type: ignore[union-attr]
        tokens = torch.randint(0, 64, (1, 23), generator=torch.Generator().manual_seed(0))
        logits = {}
        for d in ("cpu", args.device):
            hf = load_reference(tmp, arch[0]).to(d)
            with torch.inference_mode():
                logits[d] = hf(tokens.to(d), use_cache=False).logits.float().cpu()
            impl = getattr(hf.config, "_experts_implementation", None)
            print(f"transformers on {d}: experts implementation {impl}")
            with as_float64(hf, d) as hf64:
                print(f"  float64 round trip possible: {hf64 is not None}")
            with torch.inference_mode():
                again = hf(tokens.to(d), use_cache=False).logits.float().cpu()
            impl = getattr(hf.config, "_experts_implementation", None)
            print(f"  after it: experts implementation {impl}, logits moved {(again - logits[d]).abs().max():.3e}")
        gap = (logits["cpu"] - logits[args.device]).abs().max()
        print(f"transformers logits cpu vs {args.device}: max|Δ| = {gap:.3e}")


if __name__ == "__main__":
    main()
