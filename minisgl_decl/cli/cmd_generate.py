"""`minisgl-decl generate --model DIR [--spec SPEC] PROMPT...`: greedy generation, chat template applied."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..parity.run import quiet_transformers
from ..pipeline import compile_spec, load_model
from ..plan.checkpoint import load_config
from ..runtime.generate import greedy_generate
from ..runtime.runner import ModelRunner
from ..spec.find import find_spec
from ..validate import load_valid_spec


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="greedy generation from a checkpoint (CPU float32 or CUDA)")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--model", metavar="DIR", required=True, help="HF checkpoint directory")
    p.add_argument("--spec", help="spec .yaml (default: chosen from config.json `architectures`)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    quiet_transformers()
    spec = load_valid_spec(args.spec) if args.spec else find_spec(load_config(Path(args.model)))
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    compiled = compile_spec(spec, args.model, dtype=dtype)
    model = load_model(compiled, device=args.device)
    tok = AutoTokenizer.from_pretrained(args.model)
    if args.raw or tok.chat_template is None:
        texts = list(args.prompts)
    else:
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         tokenize=False) for p in args.prompts]
    ids = [tok(t, add_special_tokens=args.raw)["input_ids"] for t in texts]
    runner = ModelRunner(model, sum(len(i) for i in ids) + len(ids) * args.max_new_tokens,
                         dtype=dtype, device=args.device)
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for prompt, out in zip(args.prompts, greedy_generate(runner, ids, args.max_new_tokens, stop), strict=True):
        print(f"> {prompt}\n{tok.decode(out, skip_special_tokens=True)}\n")
    return 0
