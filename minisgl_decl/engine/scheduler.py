"""Which requests run in the next step, and where their KV goes.

Policy (one step = one forward):

1. **Decodes first.** Every running request with one pending token (the token it sampled
   last) gets one new slot. If the pool (free + evictable cache) cannot give them all, the
   most recently admitted running request is preempted (its KV goes to the prefix cache,
   evictable, or back to the pool; its output is kept) until it can. The oldest request
   always fits alone (admission rejects anything larger than the pool), so work never stops.
2. **Prefill chunks up to `chunk` tokens** on top of the decodes: first requests already
   part-way through their prompt (oldest first), then new requests from the waiting queue
   (first come, first served) while the budget lasts, fewer than `max_running` run, and the
   pool can hold the chunk plus one more token for every running request. A prompt longer
   than the budget is split over steps, so a long prompt delays the running decodes by at
   most one chunk's compute per step.
3. A new request first looks up its longest cached prefix (all but its last token) in the
   radix cache, locks it and starts after it.

Admission order (`policy`, `serve --schedule-policy`):

- `fcfs` (default): the waiting queue in arrival order (preempted requests at its head).
- `shortest-first`: the waiting request with the fewest tokens left to compute first
  (prompt, plus the output so far of a preempted request; ties in arrival order), so under a
  burst the short prompts get their first token after the other short prompts' prefill
  rather than after everything that arrived before them. Aging bounds the wait: every step
  that admits a request ages the requests left waiting by one; a request that has aged
  `max_wait_steps` steps (and a preempted one at once) is *overdue*, and overdue requests are
  admitted before all others, oldest first. So a request is passed over in at most
  `max_wait_steps` steps, whatever keeps arriving, and then waits only for requests that are
  older than it (as under fcfs). The order does not consult the prefix cache: requests that
  share a cached prefix keep their relative order.

Under overlap scheduling (`EngineCore`, CUDA) the step is planned before the previous
step's tokens reach the host: a request whose last token is sampled (`final`, max_tokens
reached) waits to be reported and is not decoded again; one that ends on EOS or a stop
string runs one wasted decode, discarded when the engine learns it finished.

The step's tokens are ordered as the items: decodes, then prefill chunks. A step with only
one-token items runs the decode path; any longer item makes it one mixed extend forward.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ..runtime.runner import SlotPool
from .api import DEFAULT_MAX_WAIT_STEPS, SCHEDULE_POLICIES, InvalidRequest, SchedulePolicy
from .radix import RadixCache
from .request import Request


@dataclass
class Item:
    req: Request
    start: int  # first position run in this step
    slots: list[int]


@dataclass
class Plan:
    items: list[Item]
    writes: tuple[list[int], list[int], list[int]]  # (rows, positions, slots) table writes before the step

    @property
    def is_decode(self) -> bool:
        return all(len(it.slots) == 1 for it in self.items)


_OVERDUE = -(1 << 62)  # the age stamp of a preempted request: overdue at once


class Scheduler:
    def __init__(
        self,
        pool: SlotPool,
        cache: RadixCache | None,
        max_running: int,
        chunk: int,
        policy: SchedulePolicy = "fcfs",
        max_wait_steps: int = DEFAULT_MAX_WAIT_STEPS,
    ) -> None:
        if policy not in SCHEDULE_POLICIES:
            choices = ", ".join(SCHEDULE_POLICIES)
            raise InvalidRequest(f"--schedule-policy must be one of {choices}, got {policy!r}", "schedule_policy")
        if max_wait_steps < 0:
            raise InvalidRequest(f"--max-wait-steps must be >= 0, got {max_wait_steps}", "max_wait_steps")
        self.pool, self.cache = pool, cache
        self.max_running, self.chunk = max_running, chunk
        self.policy, self.max_wait_steps = policy, max_wait_steps
        self.admit_steps = 0  # steps that admitted a waiting request (the aging clock)
        self._stamp: dict[Request, int] = {}  # waiting request -> admit_steps when first seen waiting
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free_rows = list(range(max_running - 1, -1, -1))
        self.preemptions = 0
        self.cached_tokens = 0  # prompt tokens served from the cache (first admissions)

    # ---- memory ----

    def available(self) -> int:
        return self.pool.available + (self.cache.evictable if self.cache is not None else 0)

    def _alloc(self, n: int) -> list[int] | None:
        if self.pool.available < n and self.cache is not None:
            self.pool.give(self.cache.evict(n - self.pool.available))
        if self.pool.available < n:
            return None
        return self.pool.take(n)

    def release(self, req: Request) -> None:
        """Give up a request's KV: computed tokens go to the prefix cache (or the pool), its row is freed."""
        if self.cache is not None and req.slots:
            have = self.cache.insert(req.tokens(0, len(req.slots)), req.slots)
            self.pool.give(req.slots[req.cache_len : have])  # duplicates of what the tree already holds
        else:
            self.pool.give(req.slots[req.cache_len :])
        if req.node is not None and self.cache is not None:
            self.cache.unlock(req.node)
        if req.row >= 0:
            self.free_rows.append(req.row)
        req.slots, req.node, req.cache_len, req.row, req.writes = [], None, 0, -1, []

    def cache_prefix(self, req: Request) -> None:
        """Put a running request's computed tokens into the prefix cache now (after its prefill)."""
        if self.cache is None or len(req.slots) <= req.cache_len:
            return
        tokens = req.tokens(0, len(req.slots))
        have = self.cache.insert(tokens, req.slots)
        match = self.cache.match(tokens)
        for pos in range(req.cache_len, have):  # the tree held these already: switch to its slots
            if req.slots[pos] != match.slots[pos]:
                self.pool.give([req.slots[pos]])
                req.writes.append((pos, match.slots[pos]))
        self.cache.lock(match.node)
        if req.node is not None:
            self.cache.unlock(req.node)
        req.slots, req.node, req.cache_len = list(match.slots), match.node, len(match.slots)

    def preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.release(req)
        self.waiting.appendleft(req)
        self._stamp[req] = _OVERDUE  # it had started: it goes first again
        self.preemptions += 1

    def remove(self, req: Request) -> None:
        """Drop a finished or aborted request and free its KV."""
        if req in self.running:
            self.running.remove(req)
            self.release(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._stamp.pop(req, None)

    # ---- the step ----

    def schedule(self) -> Plan:
        while True:
            plan = self._try()
            if plan.items or all(r.final for r in self.running):
                return plan
            self.preempt(self.running[-1])  # nothing could run: make room (the oldest always fits)

    def _try(self) -> Plan:
        decodes = [r for r in self.running if r.pending == 1 and not r.final]
        while self.running and self.available() < len(decodes):
            victim = self.running[-1]
            if victim in decodes:
                decodes.remove(victim)
            self.preempt(victim)
        items = []
        for r in decodes:
            slots = self._alloc(1)
            assert slots is not None  # ensured above
            items.append(Item(r, len(r.slots), slots))
        budget = self.chunk
        for r in self.running:
            if budget == 0:
                break
            if r.pending > 1:
                n = min(budget, r.pending, self.available())
                slots = self._alloc(n) if n else None
                if slots is None:
                    break
                items.append(Item(r, len(r.slots), slots))
                budget -= n
        admitted = False
        room = budget > 0 and len(self.running) < self.max_running and bool(self.free_rows)
        for req in self._admission_order() if room else ():
            if budget <= 0 or len(self.running) >= self.max_running or not self.free_rows:
                break
            item = self._admit(req, budget)
            if item is None:
                break  # the first in order does not fit: nothing behind it jumps the queue
            if self.waiting[0] is req:
                self.waiting.popleft()
            else:
                self.waiting.remove(req)
            self._stamp.pop(req, None)
            items.append(item)
            budget -= len(item.slots)
            admitted = True
        if admitted:
            self.admit_steps += 1  # everyone still waiting has aged one step
        for it in items:
            it.req.slots += it.slots
        rows, pos, slots = [], [], []
        for r in self.running:
            for p, s in r.writes:
                rows.append(r.row)
                pos.append(p)
                slots.append(s)
            r.writes = []
        return Plan(items, (rows, pos, slots))

    def _admission_order(self) -> Iterator[Request]:
        """The waiting requests in the order they may be admitted (see the module doc)."""
        if self.policy == "fcfs" or len(self.waiting) < 2:
            yield from list(self.waiting)
            return
        now, limit = self.admit_steps, self.max_wait_steps
        overdue: list[Request] = []
        rest: list[tuple[int, int, Request]] = []
        for r in self.waiting:  # queue order: preempted first, then arrival order
            stamp = self._stamp.setdefault(r, now)
            if now - stamp >= limit:
                overdue.append(r)
            else:
                rest.append((r.total, r.key, r))
        yield from overdue
        heapq.heapify(rest)  # popped lazily: a step admits only a few
        while rest:
            yield heapq.heappop(rest)[2]

    def _admit(self, req: Request, budget: int) -> Item | None:
        match = None
        if self.cache is not None:
            match = self.cache.match(req.tokens(0, req.total - 1))
            self.cache.lock(match.node)
        cached = match.length if match is not None else 0
        n = min(budget, req.total - cached)
        reserve = len(self.running)  # one more token for every running request next step
        slots = self._alloc(n) if self.available() >= n + reserve else None
        if slots is None:
            if match is not None and self.cache is not None:
                self.cache.unlock(match.node)
            return None
        req.row = self.free_rows.pop()
        if match is not None:
            req.slots, req.node, req.cache_len = list(match.slots), match.node, cached
            req.writes = list(enumerate(match.slots))
        if not req.admitted:
            req.cached_tokens, req.admitted = cached, True
            self.cached_tokens += cached
        self.running.append(req)
        return Item(req, cached, slots)
