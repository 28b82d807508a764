"""Admission order of waiting requests: fcfs (default) and shortest-first with aging.

The scheduler is driven directly (a real slot pool, no model) for the order and the aging
bound; the engine on the demo model must still give transformers' greedy tokens under
both policies (the order changes which request runs when, never what it computes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import DEMO, chat_ids, hf_greedy, load_demo_engine_model

from minisgl_decl.cli.cmd_serve import engine_config
from minisgl_decl.cli.main import build_parser
from minisgl_decl.engine import LLM, EngineConfig, InvalidRequest, SamplingParams
from minisgl_decl.engine.loader import LoadedModel
from minisgl_decl.engine.request import Request
from minisgl_decl.engine.scheduler import Plan, Scheduler
from minisgl_decl.runtime.runner import SlotPool

ONE = SamplingParams(max_tokens=1, temperature=0)


class Driver:
    """A scheduler and its requests; `step` plans one step and plays the model: every request
    whose prompt is done samples one token and, at max_tokens, finishes."""

    def __init__(self, policy: str, chunk: int, max_wait_steps: int = 16, max_running: int = 64) -> None:
        self.sched = Scheduler(SlotPool(100_000), None, max_running, chunk, policy, max_wait_steps)  # type: ignore[arg-type]
        self.keys = 0

    def add(self, name: str, prompt_len: int, params: SamplingParams = ONE) -> Request:
        req = Request(self.keys, name, list(range(1, prompt_len + 1)), params, None)
        self.keys += 1
        self.sched.waiting.append(req)
        return req

    def step(self) -> Plan:
        plan = self.sched.schedule()
        for it in plan.items:
            r = it.req
            if r.pending == 0:  # its last token ran: the model samples one
                r.output.append(7)
                if r.final:
                    self.sched.remove(r)
        return plan


def admitted(plan: Plan) -> list[tuple[str, int]]:
    """(request id, tokens run) of the step's prompt chunks."""
    return [(it.req.request_id, len(it.slots)) for it in plan.items if len(it.slots) > 1 or it.start == 0]


def test_fcfs_admits_in_arrival_order() -> None:
    d = Driver("fcfs", chunk=40)
    for name, n in (("long", 50), ("short", 10), ("mid", 30)):
        d.add(name, n)
    assert admitted(d.step()) == [("long", 40)]  # the first arrival takes the whole budget
    assert admitted(d.step()) == [("long", 10), ("short", 10), ("mid", 20)]


def test_shortest_first_admits_the_fewest_prompt_tokens_first() -> None:
    d = Driver("shortest-first", chunk=40)
    for name, n in (("long", 50), ("short", 10), ("mid", 30), ("tie", 10)):
        d.add(name, n)
    assert admitted(d.step()) == [("short", 10), ("tie", 10), ("mid", 20)]  # ties in arrival order
    # a request part-way through its prompt continues first, then the shortest waiting one
    assert admitted(d.step()) == [("mid", 10), ("long", 30)]
    assert admitted(d.step()) == [("long", 20)]
    assert not d.sched.waiting and not d.sched.running


def test_a_preempted_request_goes_first_under_shortest_first() -> None:
    d = Driver("shortest-first", chunk=100)
    big = d.add("big", 60, SamplingParams(max_tokens=5, temperature=0))
    d.step()
    assert big in d.sched.running
    d.add("small", 5)
    d.sched.preempt(big)  # e.g. the pool ran short
    assert admitted(d.step())[0] == ("big", 61)  # recomputed (prompt + its token) before the shorter one


def stream_of_short_requests(d: Driver, steps: int) -> int | None:
    """A long prompt, then one short prompt arriving every step, each exactly one chunk:
    the step at which the long prompt is first admitted (None: not within `steps`)."""
    d.add("long", 200)
    for i in range(steps):
        d.add(f"short{i}", d.sched.chunk)
        if "long" in [r for r, _ in admitted(d.step())]:
            return i
    return None


@pytest.mark.parametrize("max_wait", [0, 1, 5, 12])
def test_aging_bounds_how_long_a_long_prompt_is_passed_over(max_wait: int) -> None:
    d = Driver("shortest-first", chunk=8, max_wait_steps=max_wait)
    # passed over in exactly `max_wait` steps (each admits one later, shorter request), then first
    assert stream_of_short_requests(d, 60) == max_wait


def test_without_aging_the_stream_would_starve_it() -> None:
    """What the bound prevents: with a wait limit beyond the run, the long prompt never gets in."""
    assert stream_of_short_requests(Driver("shortest-first", chunk=8, max_wait_steps=10_000), 60) is None
    assert stream_of_short_requests(Driver("fcfs", chunk=8), 60) == 0


@pytest.mark.parametrize("max_wait", [0, 3, 8])
def test_no_request_is_passed_over_more_than_max_wait_steps(max_wait: int) -> None:
    """Random lengths and arrivals near the prefill capacity: count, for every request, the
    steps in which a later arrival was admitted while it kept waiting."""
    gen = torch.Generator().manual_seed(3)
    d = Driver("shortest-first", chunk=64, max_wait_steps=max_wait, max_running=4)
    passed: dict[Request, int] = {}
    for _ in range(400):
        if float(torch.rand(1, generator=gen)) < 0.35:  # ~52 prompt tokens a step, 64 admitted at most
            req = d.add(f"r{d.keys}", int(torch.randint(2, 300, (1,), generator=gen)), SamplingParams(max_tokens=3))
            passed[req] = 0
        newest = max((it.req.key for it in d.step().items if it.start == 0), default=-1)
        for r in d.sched.waiting:
            passed[r] += newest > r.key
    most = max(passed.values())
    assert most <= max_wait
    assert most > 0 if max_wait else most == 0  # the load really reorders (max_wait 0: plain fcfs)
    assert len(d.sched.waiting) < 40  # and the queue keeps draining


def test_bad_policy_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match="schedule-policy must be one of fcfs, shortest-first"):
        Scheduler(SlotPool(10), None, 4, 8, "sjf")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="max-wait-steps"):
        Scheduler(SlotPool(10), None, 4, 8, "shortest-first", -1)


def test_serve_flags_reach_the_engine_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--model", str(tmp_path), "--schedule-policy", "shortest-first", "--max-wait-steps", "3"]
    )
    config = engine_config(args, tmp_path)
    assert (config.schedule_policy, config.max_wait_steps, config.warmup) == ("shortest-first", 3, None)
    plain = engine_config(build_parser().parse_args(["serve", "--no-warmup"]), tmp_path)
    assert (plain.schedule_policy, plain.warmup) == ("fcfs", False)


# ---- the engine on the demo model ----

NEW = 12
QUESTIONS = ["Why do ships float?", "What is the capital of France?", "Hi"]
SYSTEM = "You are a careful assistant for a small museum of maritime history. Answer briefly and politely."


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_demo_engine_model()


@pytest.fixture(scope="module")
def prompts(loaded: LoadedModel) -> list[list[int]]:
    """Lengths far apart (with and without a system prompt), the longest first."""
    chats = [
        [{"role": "system", "content": SYSTEM * 3}, {"role": "user", "content": QUESTIONS[0]}],
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[1]}],
        [{"role": "user", "content": QUESTIONS[2]}],
    ]
    ids = chat_ids(loaded.tokenizer, chats)
    assert len(ids[0]) > len(ids[1]) > len(ids[2])
    return ids


@pytest.fixture(scope="module")
def expected(prompts: list[list[int]], loaded: LoadedModel) -> list[list[int]]:
    """transformers greedy `generate`, one prompt at a time."""
    return hf_greedy(DEMO, "LlamaForCausalLM", prompts, sorted(loaded.eos_ids), NEW)


@pytest.mark.parametrize("policy", ["fcfs", "shortest-first"])
def test_engine_output_is_transformers_under_both_policies(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]], policy: str
) -> None:
    config = EngineConfig(model=DEMO, schedule_policy=policy, chunked_prefill_size=16, max_kv_tokens=4096)  # type: ignore[arg-type]
    core = LLM(config, loaded=loaded).core
    for i, p in enumerate(prompts):
        core.add_request(str(i), p, SamplingParams(max_tokens=NEW, temperature=0))
    got: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    first_token_step: dict[str, int] = {}
    step = 0
    while core.has_work():
        for o in core.step():
            got[o.request_id] += o.token_ids
            first_token_step.setdefault(o.request_id, step)
        step += 1
    assert [got[str(i)] for i in range(len(prompts))] == expected
    order = sorted(first_token_step, key=lambda r: first_token_step[r])
    # fcfs: the longest (first) prompt answers first; shortest-first: the shortest one does
    assert order == (["0", "1", "2"] if policy == "fcfs" else ["2", "1", "0"])
