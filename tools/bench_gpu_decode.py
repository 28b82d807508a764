"""GPU decode speed of the engine path (ModelRunner, CUDA graphs on/off) against transformers.

Run on a CUDA machine from the repo root (no network needed):

    PYTHONPATH=$PWD python tools/bench_gpu_decode.py [--shapes qwen3-0.6b,llama3-8b] [--concurrent 64]

For each shape: a transformers model is made from a config at the real shape with random
weights (HF init, bf16) on the GPU and saved as safetensors; our model is loaded from that
directory through the spec's loader plan (bf16). Then, all in one process on one card:

* ours, batch 1: prompt 128 random tokens, 256 greedy new tokens (argmax on the device, one
  host read of the token per step, as the engine's sampler does); decode tok/s excludes
  the prefill. With CUDA graphs (captured for the batch size first) and without.
* the bound: weight bytes read per step (all parameters, bf16; of routed experts only
  top_k / E) over the copy bandwidth measured here (1 GiB device copy, bytes read + written);
* transformers `generate` (sdpa, greedy, static shapes, same prompt and token counts):
  decode tok/s = (tokens after the first) / (time of the full call - time of a 1-token call);
* with --concurrent N: N requests of prompt 128 decoded together for 256 tokens (ours with
  graphs, and transformers `generate` on the same batch), output tok/s;
* a torch.profiler summary of 16 graph-replayed decode steps at batch 1: GPU kernel time
  per step against wall time per step, and the largest kernels.

Prints a markdown table last; writes it to $OUT/decode.md when $OUT is set.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import triton
from bench_shapes import SHAPES
from gpu_copy_bandwidth import copy_tbps

DEV = "cuda"
BF16 = torch.bfloat16
SPECS = Path(__file__).resolve().parent.parent / "specs"
ROWS: list[list[str]] = []
NOTES: list[str] = []


def row(*cells: object) -> None:
    ROWS.append([c if isinstance(c, str) else f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells])
    print(" | ".join(ROWS[-1]), flush=True)


def make_hf(cfg: dict[str, Any], directory: Path) -> Any:
    """Random transformers model at the real shape on the GPU (bf16, sdpa), saved to `directory`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(0)
    with torch.device(DEV):
        hf = AutoModelForCausalLM.from_config(config, dtype=BF16, attn_implementation="sdpa")
    hf.eval()
    hf.save_pretrained(directory, safe_serialization=True)
    return hf


def load_ours(spec_name: str, directory: Path) -> Any:
    from minisgl_decl.pipeline import compile_spec, load_model
    from minisgl_decl.spec.compile import load_ir

    compiled = compile_spec(load_ir(SPECS / f"{spec_name}.yaml"), directory)
    return load_model(compiled, device=DEV, dtype=BF16, progress=False)


def ours_decode(model: Any, vocab: int, batch: int, prompt: int, new: int, graphs: bool) -> tuple[float, Any]:
    """Decode tok/s of `batch` requests (prompt tokens each, `new` greedy tokens); returns the runner."""
    from minisgl_decl.runtime.runner import ModelRunner

    runner = ModelRunner(
        model, batch * (prompt + new) + 64, dtype=BF16, device=DEV, max_rows=batch, max_len=prompt + new + 32
    )
    if graphs:
        runner.capture_cuda_graphs([batch])
    gen = torch.Generator().manual_seed(batch)
    prompts = {i: torch.randint(0, vocab, (prompt,), generator=gen).tolist() for i in range(batch)}
    tokens: dict[int, int] = {}
    for start in range(0, batch, 16):  # prefill in groups of 16 requests
        part = {i: prompts[i] for i in range(start, min(batch, start + 16))}
        for i, logits in zip(part, runner.extend(part), strict=True):
            tokens[i] = int(logits.argmax())
    # one untimed decode step (first use of each batch shape), then the timed ones
    out = torch.stack(runner.decode(tokens)).argmax(-1).tolist()
    tokens = dict(zip(tokens, out, strict=True))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(new - 2):
        out = torch.stack(runner.decode(tokens)).argmax(-1).tolist()
        tokens = dict(zip(tokens, out, strict=True))
    dt = time.perf_counter() - t0
    return batch * (new - 2) / dt, runner


def hf_decode(hf: Any, vocab: int, batch: int, prompt: int, new: int, device: str = DEV) -> float:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, prompt), generator=gen).to(device)
    mask = torch.ones_like(ids)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def run(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        sync()
        return time.perf_counter() - t0

    run(4)
    first = min(run(1) for _ in range(2))
    full = run(new)
    return batch * (new - 1) / (full - first)


def profile_steps(runner: Any, vocab: int, steps: int = 16) -> str:
    """GPU kernel time vs wall time per decode step (graphs on, batch 1), and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    tokens = {i: 1 for i in runner.contexts}
    if not tokens:
        return "profile: no live request"
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            out = torch.stack(runner.decode(tokens)).argmax(-1).tolist()
            tokens = dict(zip(tokens, out, strict=True))
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps * 1e6
    enqueue = []  # host time of one decode call up to the graph launch (the GPU runs on)
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = runner.decode(tokens)
        enqueue.append((time.perf_counter() - t0) * 1e6)
        tokens = dict(zip(tokens, torch.stack(logits).argmax(-1).tolist(), strict=True))
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in kernels) / steps
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]
    lines = [
        f"profile (graphs on, batch 1, {steps} steps under the profiler): wall {wall:.0f} us/step, "
        f"GPU kernels {total:.0f} us/step ({100 * total / wall:.0f}% busy); host time of one decode call "
        f"(without the profiler, up to the launch) {sorted(enqueue)[steps // 2]:.0f} us"
    ]
    lines += [f"  {e.self_device_time_total / steps:8.1f} us/step  {e.count // steps:4d}x  {e.key[:90]}" for e in top]
    return "\n".join(lines)


def bench_shape(name: str, copy: float, concurrent: int, profile: bool) -> None:
    spec_name, cfg = SHAPES[name]
    vocab = cfg["vocab_size"]
    directory = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    t0 = time.perf_counter()
    hf = make_hf(cfg, directory)
    model = load_ours(spec_name, directory)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # bytes read per batch-1 step: every parameter (as the issue counts it), but of the routed
    # experts (expert-stacked, 3-D) only top_k of E
    experts = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 3)
    active = weight_bytes - experts + experts * cfg.get("num_experts_per_tok", 1) / cfg.get("num_experts", 1)
    NOTES.append(
        f"{name}: checkpoint written and loaded in {time.perf_counter() - t0:.0f} s; "
        f"{weight_bytes / 1e9:.2f} GB of weights, {active / 1e9:.2f} GB read per batch-1 step"
    )
    bound = copy * 1e12 / active
    prompt, new = 128, 256
    on, runner = ours_decode(model, vocab, 1, prompt, new, graphs=True)
    if profile:
        try:
            NOTES.append(f"{name}: " + profile_steps(runner, vocab))
        except Exception as err:  # the profile is a diagnostic: report, keep the numbers
            NOTES.append(f"{name}: profiler failed: {err!r}")
    del runner
    off, runner = ours_decode(model, vocab, 1, prompt, new, graphs=False)
    del runner
    theirs = hf_decode(hf, vocab, 1, prompt, new)
    row(name, 1, "ours, CUDA graphs", f"{on:.1f}", f"{on / bound:.0%}", f"{on / theirs:.2f}x")
    row(name, 1, "ours, no graphs", f"{off:.1f}", f"{off / bound:.0%}", f"{off / theirs:.2f}x")
    row(name, 1, "transformers generate (sdpa)", f"{theirs:.1f}", f"{theirs / bound:.0%}", "1.00x")
    row(name, 1, "bound: weight bytes / copy BW", f"{bound:.1f}", "100%", "-")
    if concurrent > 1:
        ours_c, runner = ours_decode(model, vocab, concurrent, prompt, new, graphs=True)
        del runner
        theirs_c = hf_decode(hf, vocab, concurrent, prompt, new)
        row(name, concurrent, "ours, CUDA graphs", f"{ours_c:.1f}", "-", f"{ours_c / theirs_c:.2f}x")
        row(name, concurrent, "transformers generate (sdpa)", f"{theirs_c:.1f}", "-", "1.00x")
    del hf, model
    gc.collect()
    torch.cuda.empty_cache()
    shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="qwen3-0.6b,llama3-8b")
    parser.add_argument("--concurrent", type=int, default=0, help="also decode N requests together")
    parser.add_argument("--no-profile", action="store_true")
    opts = parser.parse_args()
    import transformers

    from minisgl_decl.parity.run import quiet_transformers

    quiet_transformers()
    props = torch.cuda.get_device_properties(0)
    header = (
        f"{props.name} ({props.multi_processor_count} SMs), {datetime.date.today()}, torch {torch.__version__}, "
        f"triton {triton.__version__}, transformers {transformers.__version__}"
    )
    print(header, flush=True)
    copy = copy_tbps()
    print(f"copy bandwidth: {copy:.2f} TB/s", flush=True)
    for name in opts.shapes.split(","):
        bench_shape(name, copy, opts.concurrent, not opts.no_profile)
    lines = [
        header,
        f"copy bandwidth {copy:.2f} TB/s (1 GiB bf16 copy, read + write)",
        "",
        "| shape | batch | engine | decode tok/s | of bound | vs transformers |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in ROWS]
    lines += ["", *NOTES]
    text = "\n".join(lines)
    print("\n" + text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "decode.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
