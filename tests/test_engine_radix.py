"""The radix prefix cache: insert/match/split/evict/refcount, and a property test against a plain model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from minisgl_decl.engine.radix import RadixCache


def test_insert_then_match_returns_the_slots_of_the_longest_prefix() -> None:
    c = RadixCache()
    assert c.insert([1, 2, 3, 4], [10, 11, 12, 13]) == 0
    m = c.match([1, 2, 3, 9])
    assert m.slots == [10, 11, 12] and m.length == 3
    assert c.match([5]).slots == []
    assert c.size == 4 and c.evictable == 4


def test_match_inside_an_edge_splits_it_and_keeps_every_token() -> None:
    c = RadixCache()
    c.insert([1, 2, 3, 4], [10, 11, 12, 13])
    c.match([1, 2])  # splits [1 2 3 4] into [1 2] -> [3 4]
    assert c.insert([1, 2, 7], [20, 21, 22]) == 2  # shares [1 2]; the caller keeps slots 20, 21
    assert c.match([1, 2, 3, 4]).slots == [10, 11, 12, 13]
    assert c.match([1, 2, 7]).slots == [10, 11, 22]
    assert c.size == 5


def test_locked_nodes_are_never_evicted_and_unlock_makes_them_evictable() -> None:
    c = RadixCache()
    c.insert([1, 2, 3], [10, 11, 12])
    c.insert([1, 2, 5, 6], [10, 11, 15, 16])
    m = c.match([1, 2, 3])
    c.lock(m.node)
    assert c.evictable == 2  # only [5 6] is unreferenced
    freed = c.evict(100)
    assert sorted(freed) == [15, 16]
    assert c.match([1, 2, 3]).slots == [10, 11, 12]
    c.unlock(m.node)
    assert c.evictable == 3
    assert sorted(c.evict(100)) == [10, 11, 12] and c.size == 0


def test_eviction_is_least_recently_used_first() -> None:
    c = RadixCache()
    c.insert([1, 1], [0, 1])
    c.insert([2, 2], [2, 3])
    c.insert([3, 3], [4, 5])
    c.match([1, 1])  # [1 1] is now the most recent; [2 2] the oldest
    assert sorted(c.evict(1)) == [2, 3]
    assert sorted(c.evict(1)) == [4, 5]
    assert c.match([1, 1]).length == 2


def test_evicting_a_leaf_exposes_its_parent() -> None:
    c = RadixCache()
    c.insert([1, 2, 3], [0, 1, 2])
    c.insert([1, 2, 4], [0, 1, 3])  # [1 2] -> {[3], [4]}
    assert sorted(c.evict(4)) == [0, 1, 2, 3]
    assert c.size == 0 and c.evictable == 0


def test_unlock_without_lock_is_an_error() -> None:
    c = RadixCache()
    c.insert([1], [0])
    node = c.match([1]).node
    try:
        c.unlock(node)
    except RuntimeError as exc:
        assert "unlock" in str(exc)
    else:
        raise AssertionError("unbalanced unlock accepted")


ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "match", "lock", "unlock", "evict"]),
        st.lists(st.integers(0, 3), min_size=1, max_size=6),
        st.integers(0, 6),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_cache_behaves_like_a_set_of_cached_sequences(program: list[tuple[str, list[int], int]]) -> None:
    """Reference: a dict prefix -> slot of its last token; locks are a multiset of held prefixes."""
    c = RadixCache()
    ref: dict[tuple[int, ...], int] = {}  # every cached prefix -> the slot of its last token
    held: list[tuple[tuple[int, ...], object]] = []
    next_slot = 0
    for op, tokens, n in program:
        key = tuple(tokens)
        if op == "insert":
            have = 0
            while have < len(key) and key[: have + 1] in ref:
                have += 1
            slots = [ref[key[: i + 1]] if i < have else next_slot + i for i in range(len(key))]
            next_slot += len(key)
            assert c.insert(list(key), slots) == have
            for i in range(have, len(key)):
                ref[key[: i + 1]] = slots[i]
        elif op == "match":
            m = c.match(list(key))
            want = []
            while len(want) < len(key) and key[: len(want) + 1] in ref:
                want.append(ref[key[: len(want) + 1]])
            assert m.slots == want
        elif op == "lock":
            m = c.match(list(key))
            c.lock(m.node)
            held.append((key[: m.length], m.node))
        elif op == "unlock" and held:
            _, node = held.pop(n % len(held))
            c.unlock(node)  # type: ignore[arg-type]
        elif op == "evict":
            freed = set(c.evict(n))
            protected = {key[: i + 1] for key, _ in held for i in range(len(key))}
            gone = {p for p, s in ref.items() if s in freed}
            assert not gone & protected, "a locked prefix was evicted"
            if len(freed) < n:  # could not free n: everything unreferenced must be gone
                assert set(ref) - gone <= protected
            for p in gone:
                # a prefix goes only with everything below it
                assert not any(q[: len(p)] == p and q not in gone for q in ref)
            for p in gone:
                del ref[p]
        assert c.size == len(ref)
        protected = {key[: i + 1] for key, _ in held for i in range(len(key))}
        assert c.evictable == len(set(ref) - protected)
