"""Radix prefix cache: a token-level radix tree whose edges carry the KV slots of their tokens.

Page size is 1, so every token of an edge has its own slot. A path from the root spells a
token prefix; the slots along it hold that prefix's KV. Requests that start with a cached
prefix reuse those slots instead of recomputing them.

Ownership: the tree owns the slots of its nodes. A request using a cached prefix *locks*
the deepest node of its match (`lock`), which raises the reference count of that node and
every ancestor; a node with a count above zero is never evicted. `evict(n)` frees at least
`n` slots (when it can) from unreferenced leaves, least recently used first, and returns
them to the caller (the slot pool).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class Node:
    tokens: list[int]
    slots: list[int]
    parent: Node | None = None
    children: dict[int, Node] = field(default_factory=dict)
    refs: int = 0
    last_use: int = 0

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class Match:
    """The cached part of a token sequence: its slots, and the node to lock while using them."""

    slots: list[int]
    node: Node

    @property
    def length(self) -> int:
        return len(self.slots)


class RadixCache:
    def __init__(self) -> None:
        self.root = Node([], [])
        self.root.refs = 1  # never evicted
        self._clock = itertools.count(1)
        self.size = 0  # slots held by the tree
        self.evictable = 0  # slots in nodes with refs == 0

    def _touch(self, node: Node) -> None:
        now = next(self._clock)
        n: Node | None = node
        while n is not None:
            n.last_use = now
            n = n.parent

    def _split(self, node: Node, at: int) -> Node:
        """Cut `node`'s edge after `at` tokens; returns the new upper node (same refs, same parent)."""
        assert node.parent is not None and 0 < at < len(node.tokens)
        upper = Node(node.tokens[:at], node.slots[:at], node.parent, {}, node.refs, node.last_use)
        node.parent.children[upper.tokens[0]] = upper
        node.tokens, node.slots, node.parent = node.tokens[at:], node.slots[at:], upper
        upper.children[node.tokens[0]] = node
        return upper

    def match(self, tokens: Sequence[int]) -> Match:
        """Longest cached prefix of `tokens` (splitting an edge where the match ends inside it)."""
        node, slots, i = self.root, [], 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            edge = child.tokens
            n = 1
            limit = min(len(edge), len(tokens) - i)
            while n < limit and edge[n] == tokens[i + n]:
                n += 1
            if n < len(edge):
                child = self._split(child, n)
            slots += child.slots
            node = child
            i += n
        self._touch(node)
        return Match(slots, node)

    def insert(self, tokens: Sequence[int], slots: Sequence[int]) -> int:
        """Cache `tokens` with their KV `slots`; returns how many leading tokens were cached already.

        The tree takes ownership of `slots[returned:]`; the caller still owns (and should
        free, if they are not the tree's own) `slots[:returned]`.
        """
        if len(tokens) != len(slots):
            raise ValueError(f"{len(tokens)} tokens but {len(slots)} slots")
        found = self.match(tokens)
        node, have = found.node, found.length
        if have < len(tokens):
            leaf = Node(list(tokens[have:]), list(slots[have:]), node)
            node.children[leaf.tokens[0]] = leaf
            added = len(leaf.slots)
            self.size += added
            self.evictable += added
            self._touch(leaf)
        return have

    def lock(self, node: Node) -> None:
        n: Node | None = node
        while n is not None and n is not self.root:
            if n.refs == 0:
                self.evictable -= len(n.slots)
            n.refs += 1
            n = n.parent

    def unlock(self, node: Node) -> None:
        n: Node | None = node
        while n is not None and n is not self.root:
            if n.refs <= 0:
                raise RuntimeError("radix cache: unlock without a matching lock")
            n.refs -= 1
            if n.refs == 0:
                self.evictable += len(n.slots)
            n = n.parent

    def evict(self, n: int) -> list[int]:
        """Free at least `n` slots from unreferenced leaves, least recently used first (fewer if impossible)."""
        heap = [(leaf.last_use, id(leaf), leaf) for leaf in self._leaves() if leaf.refs == 0]
        heapq.heapify(heap)
        freed: list[int] = []
        while len(freed) < n and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.tokens[0]]
            freed += leaf.slots
            self.size -= len(leaf.slots)
            self.evictable -= len(leaf.slots)
            if parent is not self.root and parent.is_leaf and parent.refs == 0:
                heapq.heappush(heap, (parent.last_use, id(parent), parent))
        return freed

    def _leaves(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node.is_leaf and node is not self.root:
                out.append(node)
            stack.extend(node.children.values())
        return out

    def clear(self) -> list[int]:
        """Evict everything unreferenced; returns the freed slots."""
        return self.evict(self.size)
