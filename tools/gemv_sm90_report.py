"""Compile every GEMV config for sm_90 without a GPU and report registers, spills and loads.

    PYTHONPATH=$PWD python tools/gemv_sm90_report.py

Uses Triton's ahead-of-time compile (``triton.compile`` with a CUDA target) and the ptxas
bundled with Triton (``ptxas -v``). Per config: registers, spill stores, shared memory, and
how many weight loads are 16-byte vectors with the ``evict_first`` hint (``v4 evict``;
tensor-core configs load through ``cp.async`` instead). bf16, bias, K a multiple of BLOCK_K,
16-aligned pointers and strides (what the model shapes give).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from minisgl_kernels.gemv_jit import gemv_kernel
from minisgl_kernels.gemv_launch import _CONFIGS

ARGS = ("X", "W", "B", "Y", "M", "N", "K", "stride_xm", "stride_wn", "stride_ym")
ALIGNED = (0, 1, 2, 3, 6, 7, 8, 9)  # pointers and K / strides: divisible by 16


def ptxas() -> str:
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX version Triton emits
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    raise SystemExit(f"no ptxas under {bin_dir}")


def main() -> None:
    target = GPUTarget("cuda", 90, 32)
    tool = ptxas()
    head = "bucket | BLOCK_M | BLOCK_N | BLOCK_K | dot | warps | stages | registers | spill bytes | smem | v4 evict"
    print(f"| {head} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for bucket, configs in _CONFIGS.items():
        for cfg in configs:
            sig = {a: ("*bf16" if a in "XWBY" else "i32") for a in ARGS}
            const = {**cfg.kwargs, "HAS_BIAS": True, "EVEN_K": True, "EVICT": "evict_first", "UPCAST": False}
            sig.update(dict.fromkeys(const, "constexpr"))
            attrs = {(i,): [["tt.divisibility", 16]] for i in ALIGNED}
            opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            kernel = triton.compile(ASTSource(gemv_kernel, sig, const, attrs), target=target, options=opts)
            ptx = kernel.asm["ptx"]
            with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
                f.write(ptx)
                f.flush()
                res = subprocess.run([tool, "-v", "--gpu-name", "sm_90a", f.name, "-o", "/dev/null"], **_PIPE)
            regs = re.findall(r"Used (\d+) registers", res.stderr)
            spills = re.findall(r"(\d+) bytes spill stores", res.stderr)
            kw = cfg.kwargs
            print(
                f"| {bucket} | {kw['BLOCK_M']} | {kw['BLOCK_N']} | {kw['BLOCK_K']} | {kw['USE_DOT']} | "
                f"{cfg.num_warps} | {cfg.num_stages} | {','.join(regs) or res.stderr.strip()[:60]} | "
                f"{','.join(spills)} | {kernel.metadata.shared} | {ptx.count('evict_first.L2::cache_hint.v4')} |",
                flush=True,
            )


_PIPE = {"capture_output": True, "text": True, "check": False}

if __name__ == "__main__":
    main()
