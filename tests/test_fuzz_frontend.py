"""Fuzz targets (hypothesis, bounded examples): the YAML + expression front end and safetensors headers.

Whatever the input, the front end either accepts it or raises its own located error
(`SpecError` / `ExprError` / `HeaderError`); any other exception is a bug. Accepted
headers must satisfy the format's invariants (entries tile the data section exactly).
"""

from __future__ import annotations

import contextlib
import json
import string
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minisgl_decl.errors import SpecError
from minisgl_decl.plan.st_header import DTYPE_BYTES, HeaderError, read_header
from minisgl_decl.spec.expr import ExprError, parse_expr
from minisgl_decl.spec.load import load_spec_text
from minisgl_decl.validate import check_loaded

SPECS = Path(__file__).resolve().parent.parent / "specs"
LLAMA = (SPECS / "llama.yaml").read_text()
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOMBS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- YAML ---------------------------------------------------------------------------------------
yaml_tokens = st.sampled_from(
    [
        "a",
        "b",
        ":",
        " ",
        "\n",
        "  ",
        "- ",
        "&x ",
        "*x",
        "&y ",
        "*y",
        "[",
        "]",
        "{",
        "}",
        ",",
        "? ",
        "!!binary ",
        "!!python/name:os.system ",
        "'",
        '"',
        "\\x1b",
        "\t",
        "#",
        "1e400",
        ".inf",
        ".nan",
        "<<: *x",
        "---",
        "%YAML 1.1",
        "\0",
        "\ufeff",
        "é",
        "|",
        ">",
    ]
)


@FUZZ
@given(st.lists(yaml_tokens, max_size=60).map("".join))
def test_yaml_front_end_never_crashes(text: str) -> None:
    try:
        check_loaded(load_spec_text(text, "fuzz.yaml"))
    except SpecError as exc:
        assert all(p.location.line >= 1 and p.location.column >= 1 for p in exc.problems)


@BOMBS
@given(st.integers(0, 400), st.sampled_from(["[", "{a: ", "- "]), st.integers(1, 12))
def test_yaml_depth_and_alias_bombs_are_bounded(depth: int, opener: str, fan: int) -> None:
    nested = "a: " + (opener * depth if opener != "- " else "") + "1"
    laughs = "r0: &r0 [x]\n" + "".join(f"r{i}: &r{i} [{', '.join([f'*r{i - 1}'] * fan)}]\n" for i in range(1, 9))
    for text in (nested, laughs):
        with contextlib.suppress(SpecError):
            load_spec_text(text, "bomb.yaml")


@FUZZ
@given(st.sampled_from(["llama"]), st.lists(st.tuples(st.integers(0, 2000), st.text(max_size=8)), max_size=4))
def test_spliced_specs_give_located_errors(_name: str, splices: list[tuple[int, str]]) -> None:
    text = LLAMA
    for at, piece in splices:
        text = text[:at] + piece + text[at:]
    with contextlib.suppress(SpecError):
        check_loaded(load_spec_text(text, "spliced.yaml"))


# --- expressions --------------------------------------------------------------------------------
atoms = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(
        ["hidden", "heads", "xs", "'s'", "1e400", "10**30", "True", "None", "range(10**6)", "[0]*10**5", "i"]
    ),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = ["+", "-", "*", "/", "//", "%", "**", "<", "==", " and ", " or ", " in "]
    return st.one_of(
        st.tuples(children, st.sampled_from(ops), children).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
        st.tuples(st.sampled_from(["-", "not ", "+"]), children).map(lambda t: f"{t[0]}{t[1]}"),
        st.tuples(
            st.sampled_from(
                ["min", "max", "abs", "int", "float", "len", "str", "sum", "round", "range", "sqrt", "log", "bool"]
            ),
            st.lists(children, min_size=1, max_size=2),
        ).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(children, children).map(lambda t: f"[{t[0]} for i in {t[1]}]"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.tuples(children, children).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.lists(children, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    )


expressions = st.recursive(atoms, _combine, max_leaves=12)


@FUZZ
@given(st.one_of(expressions, st.text(alphabet=string.printable, max_size=40)))
def test_expressions_evaluate_or_raise_expr_error(source: str) -> None:
    env = {"hidden": 128, "heads": 8, "xs": [1, 2, 3]}
    try:
        value = parse_expr(source).evaluate(env)
    except ExprError as exc:
        assert isinstance(exc.message, str) and exc.offset >= 0
        return
    assert value is None or isinstance(value, bool | int | float | str | list | tuple | range)


# --- safetensors headers ------------------------------------------------------------------------
dims = st.lists(st.one_of(st.integers(-2, 5), st.just(2**62), st.just("2"), st.booleans()), max_size=3)
offsets = st.lists(st.one_of(st.integers(-16, 80), st.just(10**20), st.floats(0, 10)), min_size=0, max_size=3)
entry = st.fixed_dictionaries(
    {"dtype": st.sampled_from([*DTYPE_BYTES, "C64", 4]), "shape": dims, "data_offsets": offsets}
)
headers = st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__", "\x1b"]), entry, max_size=4)


def _file(tmp: Path, header: bytes, data: bytes) -> Path:
    p = tmp / "model.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return p


@FUZZ
@given(headers, st.integers(0, 64))
def test_headers_are_validated_completely(header: dict, data_len: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp), json.dumps(header).encode(), bytes(data_len))
        try:
            entries, start = read_header(path)
        except HeaderError as exc:
            assert exc.problems and all("\x1b" not in p for p in exc.problems)
            return
    spans = sorted((e.begin, e.end) for e in entries.values())
    pos = 0
    for begin, end in spans:
        assert begin == pos and end >= begin
        pos = end
    assert pos == data_len and start == 8 + len(json.dumps(header).encode())


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_arbitrary_bytes_never_crash_the_header_reader(blob: bytes, length: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "model.safetensors"
        p.write_bytes(struct.pack("<Q", length) + blob)
        try:
            read_header(p)
        except HeaderError as exc:
            # the file's bytes are never echoed: a long "length" would be visible in the message
            assert length < 10**10 or str(length) not in str(exc)
