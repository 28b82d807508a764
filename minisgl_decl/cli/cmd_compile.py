"""`minisgl-decl compile SPEC [--model DIR] [--tp N] [-o OUT] [--plan-json FILE]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..codegen.render import render_module
from ..errors import UserError, show
from ..graph.build import STACK
from ..pipeline import Compiled, compile_spec
from ..plan.describe import describe_plan
from ..validate import load_valid_spec
from .checks import check_count, check_input_dir, check_output_dir, check_output_file, write_atomic

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(sub: Any) -> None:
    p = sub.add_parser("compile", help="compile a spec: resolved config, module graph, weights, loader plan")
    p.add_argument("spec", help="spec .yaml file")
    p.add_argument("--model", metavar="DIR", help="HF checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("-o", "--out", metavar="OUT", help="write <name>_model.py, <name>_graph.json (and the plan)")
    p.add_argument("--plan-json", metavar="FILE", help="write the per-rank loader plan as JSON (needs --model)")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="dtype the plan loads parameters as (default float32; the GPU runtime uses bfloat16)",
    )
    p.set_defaults(run=run)


def _fmt(v: Any) -> str:
    if hasattr(v, "__dataclass_fields__"):
        fields = {k: getattr(v, k) for k in v.__dataclass_fields__}
        return "{" + ", ".join(f"{k}={x}" for k, x in fields.items() if x is not None) + "}"
    return repr(v)


def describe(c: Compiled) -> str:
    g = c.graph
    out = [f"spec {c.spec.file} ({g.spec_name}), tp={g.tp}", "", "== resolved config =="]
    width = max(len(k) for k in g.config.values)
    out += [f"  {k:<{width}} = {_fmt(v)}" for k, v in g.config.values.items()]
    out += ["", f"== module graph ({g.num_layers} layers; shapes full -> per rank) =="]
    shown_layer = False
    for m in g.modules:
        if m.path.startswith(f"{STACK}.") and not m.path.startswith(f"{STACK}.0."):
            if not shown_layer:
                out.append(f"  {STACK}.1..{g.num_layers - 1}: same modules as {STACK}.0")
                shown_layer = True
            continue
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in dict(m.args).items() if v is not None and k != "rope")
        out.append(f"  {m.path}: {m.layer}({args})")
        for p in m.params:
            out.append(f"      {p.name:<16} {list(p.shape)!s:<14} -> {list(p.local_shape(g.tp))!s:<14} {p.role_name}")
    out += ["", f"== dataflow program ({len(g.program)} ops after fusion; first layer shown) =="]
    layer: str | None = None  # arithmetic ops belong to the layer of the module op before them
    for op in g.program:
        if op.module:
            layer = op.module.split(".")[1] if op.module.startswith(f"{STACK}.") else None
        if layer not in (None, "0"):
            continue
        rhs = f"{op.kind}({', '.join(map(str, op.inputs))})" + (f" @ {op.module}" if op.module else "")
        out.append(f"  {', '.join(op.outputs)} = {rhs}")
    out += ["", "== weight rules (runtime parameter <- checkpoint) =="]
    for r in c.spec.weights.rules:
        srcs = " ++ ".join(s.key + (" (transposed)" if s.transpose else "") for s in r.sources)
        extra = f"  [concat dim {r.dim}]" if len(r.sources) > 1 and r.dim else ""
        extra += f"  [+{r.add}]" if r.add else ""
        extra += f"  [tied to {r.tied_to.key} if {r.tied_if}]" if r.tied_to else ""
        out.append(f"  {r.target} <- {srcs}{extra}")
    if c.plan is not None:
        out += ["", *describe_plan(c.plan)]
    return "\n".join(out)


def _json(data: Any, what: str) -> str:
    try:
        return json.dumps(data, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot write {what} as JSON: {show(exc)}") from None


def run(args: argparse.Namespace) -> int:
    check_count(args.tp, "--tp", 1, 1024)
    if args.model is not None:
        check_input_dir(args.model, "--model")
    if args.plan_json and args.model is None:
        raise UserError("--plan-json needs --model DIR (the plan is checked against the checkpoint)")
    plan_path = check_output_file(args.plan_json, "--plan-json") if args.plan_json else None
    out = check_output_dir(args.out, "-o") if args.out else None
    spec = load_valid_spec(args.spec)
    c = compile_spec(spec, args.model, args.tp, dtype=DTYPES[args.dtype])
    print(describe(c))
    # everything is rendered before anything is written: a failure leaves no partial output
    files: dict[Path, str] = {}
    if plan_path is not None and c.plan is not None:
        files[plan_path] = _json(c.plan.to_json(), "the loader plan")
    if out is not None:
        name = c.graph.spec_name
        files[out / f"{name}_model.py"] = render_module(c.graph, str(args.spec)).source
        files[out / f"{name}_graph.json"] = _json(c.graph.to_json(), "the module graph")
        if c.plan is not None:
            files[out / f"{name}_plan.json"] = _json(c.plan.to_json(), "the loader plan")
    for path, text in files.items():
        write_atomic(path, text, "--plan-json" if path == plan_path else "-o")
    if plan_path is not None:
        print(f"\nwrote {plan_path}")
    if out is not None:
        print(f"\nwrote {', '.join(str(p) for p in files if p != plan_path)}")
    return 0
