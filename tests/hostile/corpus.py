"""The hostile-input corpus (issue 11): specs, checkpoints and command lines built on the fly.

`build(root, good)` writes every case's files under `root` (nothing large is committed;
the 50 MB spec and the 200k-deep headers are generated here) and returns the cases. Each
case is one CLI invocation that must end with exit code 1 (2 for argparse usage errors),
print `expect` somewhere in its output, and never print a traceback. `heavy` cases are
the hang / memory class: they run in a subprocess with a time and address-space limit.
`good` is a tiny valid Llama checkpoint directory (config.json + model.safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SPECS = Path(__file__).resolve().parents[2] / "specs"
LLAMA_TEXT = (SPECS / "llama.yaml").read_text()


@dataclass(frozen=True)
class Case:
    name: str
    group: str  # yaml | expr | config | dataflow | serves | checkpoint | check | cli | unsafe
    argv: list[str]
    expect: str  # a fragment the output must contain (the located or clear message)
    heavy: bool = False  # hang / memory class: subprocess with limits
    codes: tuple[int, ...] = (1,)
    env: dict[str, str] = field(default_factory=dict)


def _edit(old: str, new: str, text: str = LLAMA_TEXT) -> str:
    if old not in text:
        raise AssertionError(f"corpus: {old!r} not in llama.yaml")
    return text.replace(old, new, 1)


HEAD_DIM = "head_dim:  {from: head_dim, default: hidden // heads, type: int}"
BODY_ATTN = "- h = attn(attn_norm(x))"
RESID = "- x = x + h\n      - h = mlp"
FWD_LAYERS = "- x = layers(x)"


def _expr_spec(expr: str) -> str:
    return _edit(HEAD_DIM, f"head_dim:  {{expr: {json.dumps(expr)}, type: int}}")


def _example(key: str, value: str) -> str:
    lines = LLAMA_TEXT.splitlines()
    start = lines.index("example_config:")
    for i in range(start, len(lines)):
        if lines[i].startswith(f"  {key}:"):
            lines[i] = f"  {key}: {value}"
            return "\n".join(lines) + "\n"
    raise AssertionError(key)


def _safetensors(path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> None:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


class _Builder:
    def __init__(self, root: Path, good: Path) -> None:
        self.root, self.good = root, good
        self.cases: list[Case] = []

    def spec(self, name: str, text: str | bytes) -> str:
        p = self.root / "specs" / f"{name}.yaml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(p)

    def ckpt(self, name: str, change: Callable[[Path], None], weights: bool = True) -> str:
        d = self.root / "ckpt" / name
        d.mkdir(parents=True)
        shutil.copy(self.good / "config.json", d / "config.json")
        if weights:
            os.symlink(self.good / "model.safetensors", d / "model.safetensors")
        change(d)
        return str(d)

    def add(self, name: str, group: str, argv: list[str], expect: str, **kw: object) -> None:
        self.cases.append(Case(name, group, argv, expect, **kw))  # type: ignore[arg-type]

    def validate(self, name: str, group: str, text: str | bytes, expect: str, **kw: object) -> None:
        self.add(name, group, ["validate", self.spec(name, text)], expect, **kw)

    def compile(self, name: str, group: str, text: str | bytes, expect: str, **kw: object) -> None:
        self.add(name, group, ["compile", self.spec(name, text)], expect, **kw)

    def ckpt_case(
        self,
        name: str,
        change: Callable[[Path], None],
        expect: str,
        weights: bool = True,
        group: str = "checkpoint",
        **kw: object,
    ) -> None:
        d = self.ckpt(name, change, weights)
        self.add(name, group, ["compile", str(SPECS / "llama.yaml"), "--model", d], expect, **kw)


def _yaml_cases(b: _Builder) -> None:
    laughs = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8)
    )
    b.validate("yaml_billion_laughs", "yaml", laughs, "expands to more than", heavy=True)
    b.validate("yaml_laughs_in_key", "yaml", laughs + "? *i\n: 1\n", "expands to more than", heavy=True)
    b.validate("yaml_recursive_alias_seq", "yaml", "a: &a [*a]\n", "recursive alias")
    b.validate("yaml_recursive_alias_map", "yaml", "a: &a {b: *a}\n", "recursive alias")
    b.validate("yaml_deep_flow_600", "yaml", "a: " + "[" * 600 + "]" * 600 + "\n", "nested deeper than")
    b.validate("yaml_deep_flow_5000", "yaml", "a: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested deeper than")
    b.validate(
        "yaml_deep_block_300",
        "yaml",
        "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v\n",
        "nested deeper than",
    )
    body = "spec_version: 1\nname: x\n"
    b.validate("yaml_utf16_bom", "yaml", body.encode("utf-16"), "missing required key `serves`")
    b.validate("yaml_utf16_no_bom", "yaml", body.encode("utf-16-le"), "NUL character")
    b.validate("yaml_latin1", "yaml", "spec_version: 1\nname: caf\xe9\n".encode("latin-1"), "not UTF-8 text")
    b.validate("yaml_utf8_bad_in_comment", "yaml", b"# \xff\xfe\nspec_version: 1\n", "yaml:1:3: error: not UTF-8")
    b.validate("yaml_control_char", "yaml", "spec_version: 1\n\x1b[2J: 1\n", "special characters")
    b.validate("yaml_escaped_control_in_name", "yaml", 'spec_version: 1\nname: "a\\x1b[31m"\n', "a\\x1b[31m")
    b.validate("yaml_empty", "yaml", "", "empty")
    b.validate("yaml_python_tag", "yaml", "a: !!python/object/apply:os.system ['true']\n", "is not allowed here")
    b.validate("yaml_python_scalar_tag", "yaml", "a: !!python/name:os.system\n", "could not determine")
    b.validate("yaml_collection_key", "yaml", "? [a, b]\n: 1\n", "mapping keys must be strings")
    b.validate("yaml_bool_key", "yaml", "true: 1\n", "mapping keys must be strings")
    b.validate("yaml_two_documents", "yaml", "a: 1\n---\nb: 2\n", "YAML syntax error")
    b.validate("yaml_tab_indent", "yaml", "a:\n\tb: 1\n", "YAML syntax error")
    b.validate("yaml_huge_50mb", "yaml", "# " + "x" * (50 << 20) + "\n", "larger than allowed", heavy=True)
    b.validate("yaml_spec_version_list", "yaml", _edit("spec_version: 1", "spec_version: [1]"), "spec_version")
    fifo = b.root / "specs" / "fifo.yaml"
    os.mkfifo(fifo)
    b.add("yaml_fifo_spec", "yaml", ["compile", str(fifo)], "is a FIFO", heavy=True)
    d = b.root / "specdir"
    d.mkdir()
    (d / "ok.yaml").write_text(LLAMA_TEXT)
    os.mkfifo(d / "pipe.yaml")
    b.add("yaml_fifo_in_spec_dir", "yaml", ["validate", str(d)], "is a FIFO", heavy=True)
    b.add("yaml_dev_zero", "yaml", ["compile", "/dev/zero"], "character device", heavy=True)
    b.add("yaml_spec_is_dir", "yaml", ["compile", str(SPECS)], "is a directory")
    b.add("yaml_spec_missing", "yaml", ["compile", str(b.root / "nope.yaml")], "No such file")
    loop = b.root / "specs" / "loop.yaml"
    os.symlink(loop, loop)
    b.add("yaml_symlink_loop", "yaml", ["compile", str(loop)], "cannot read")


def _expr_cases(b: _Builder) -> None:
    bombs = {
        "expr_unary_600": ("-" * 600 + "1", "nested 602 levels"),
        "expr_add_999": ("+".join(["1"] * 999), "levels deep"),
        "expr_nested_comprehension": ("len([[j for j in range(10**6)] for i in range(10**6)])", "MAX_EXPR_SIZE"),
        "expr_pow_tower": ("((10**1000)**1000)**1000", "bits"),
        "expr_round_huge_ndigits": ("round(1, -10**9)", "ndigits"),
        "expr_sum_lists": ("len(sum([[0]]*10**6, []))", "sequence longer"),
        "expr_str_bomb": ("len(str([str([0]*10**6)]*10**6))", "MAX_EXPR_SIZE"),
        "expr_concat_chain": ("len([0]*10**6 + [0]*10**6 + [0]*10**6 + [0]*10**6)", "sequence longer"),
        "expr_percent_format": ("len('%999999999d' % 1)", "string formatting"),
        "expr_int_mult_bits": ("len(str(2**1000 * 2**1000 * 2**1000 * 2**1000 * 2**1000))", "bits"),
        "expr_parens_300": ("(" * 300 + "1" + ")" * 300, "syntax error"),
        "expr_iterate_int": ("[x for x in 5]", "cannot iterate"),
        "expr_div_zero": ("hidden // 0", "cannot evaluate"),
        "expr_sqrt_negative": ("int(sqrt(-1))", "math domain"),
        "expr_int_of_inf": ("int(1e400)", "infinity"),
        "expr_dunder": ("().__class__", "attribute access"),
        "expr_import": ("__import__('os').system('true')", "not allowed"),
        "expr_nul": ("1\0", "NUL"),
    }
    for name, (expr, expect) in bombs.items():
        b.compile(name, "expr", _expr_spec(expr), expect, heavy=True)


def _config_cases(b: _Builder) -> None:
    values = {
        "config_hidden_inf": ("hidden_size", ".inf", "HF config `hidden_size`"),
        "config_hidden_1e400": ("hidden_size", "1e400", "HF config `hidden_size`"),
        "config_hidden_10e30": ("hidden_size", "1000000000000000000000000000000", "out of range"),
        "config_hidden_nan": ("hidden_size", ".nan", "expected an integer"),
        "config_hidden_string": ("hidden_size", "'128'", "expected an integer"),
        "config_hidden_negative": ("hidden_size", "-128", "should be greater than 0"),
        "config_hidden_list": ("hidden_size", "[128]", "expected an integer"),
        "config_hidden_bool": ("hidden_size", "true", "expected an integer"),
        "config_eps_inf": ("rms_norm_eps", ".inf", "finite"),
        "config_heads_zero": ("num_attention_heads", "0", "heads"),
        "config_layers_neg": ("num_hidden_layers", "-1", "repeat"),
        "config_layers_huge": ("num_hidden_layers", "100000", "repeat"),
        "config_max_pos_inf": ("max_position_embeddings", ".inf", "max_position_embeddings"),
    }
    for name, (key, value, expect) in values.items():
        b.compile(name, "config", _example(key, value), expect, heavy=key == "num_hidden_layers")
    b.add(
        "check_layers_4096",
        "config",
        ["check", b.spec("check_layers_4096", _example("num_hidden_layers", "4096"))],
        "parameters",
        heavy=True,
    )
    b.add(
        "check_vocab_3e7",
        "config",
        ["check", b.spec("check_vocab_3e7", _example("vocab_size", "30000000"))],
        "parameters",
        heavy=True,
    )
    b.compile(
        "config_value_datetime",
        "config",
        _edit("  rope:      {rope: {}}", "  rope:      {rope: {}}\n  when: {value: 2001-12-14}"),
        "datetime",
    )
    b.compile(
        "config_value_binary",
        "config",
        _edit("  rope:      {rope: {}}", "  rope:      {rope: {}}\n  blob: {value: !!binary aGVsbG8=}"),
        "bytes",
    )
    b.compile(
        "config_value_inf",
        "config",
        _edit("  rope:      {rope: {}}", "  rope:      {rope: {}}\n  big: {value: .inf}"),
        "non-finite",
    )
    b.compile(
        "config_expr_range",
        "config",
        _edit("  rope:      {rope: {}}", "  rope:      {rope: {}}\n  r: {expr: 'range(3)'}"),
        "range",
    )
    b.add(
        "config_expr_complex_out",
        "config",
        [
            "compile",
            b.spec(
                "config_expr_complex",
                _edit("  rope:      {rope: {}}", "  rope:      {rope: {}}\n  c: {expr: '(-8) ** 0.5'}"),
            ),
            "-o",
            str(b.root / "complex_out"),
        ],
        "complex",
    )
    b.compile(
        "config_rope_theta_string",
        "config",
        _example("rope_parameters", "{rope_type: default, rope_theta: abc}"),
        "rope",
    )


def _dataflow_cases(b: _Builder) -> None:
    edits = {
        "flow_assign_constant": (RESID, "- x = 3\n      - h = mlp", "assigns a constant"),
        "flow_assign_string": (RESID, "- x = 'abc'\n      - h = mlp", "assigns a constant"),
        "flow_times_string": (RESID, "- x = x * 'abc'\n      - h = mlp", "not a number"),
        "flow_divide_zero": (RESID, "- x = x + h / 0\n      - h = mlp", "division by zero"),
        "flow_divide_zero_config": (RESID, "- x = x + h / (hidden - hidden)\n      - h = mlp", "division by zero"),
        "flow_nan_constant": (RESID, "- x = x * (1e400 - 1e400)\n      - h = mlp", "NaN"),
        "flow_two_args": (BODY_ATTN, "- h = attn(attn_norm(x), x)", "exactly one tensor argument"),
        "flow_no_args": (BODY_ATTN, "- h = attn()", "exactly one tensor argument"),
        "flow_constant_arg": (BODY_ATTN, "- h = attn(3)", "takes a tensor"),
        "flow_string_arg": (BODY_ATTN, "- h = attn('x')", "takes a tensor"),
        "flow_keyword_arg": (BODY_ATTN, "- h = attn(x=x)", "positional"),
        "flow_starred_arg": (BODY_ATTN, "- h = attn(*x)", "exactly one tensor argument"),
        "flow_layers_two_args": (FWD_LAYERS, "- x = layers(x, x)", "exactly one tensor argument"),
        "flow_layers_constant": (FWD_LAYERS, "- x = layers(hidden)", "takes a tensor"),
        "flow_attn_twice": (BODY_ATTN, "- h = attn(attn(attn_norm(x)))", "owns a KV cache"),
        "flow_layers_twice": (FWD_LAYERS, "- x = layers(layers(x))", "runs every layer's KV cache"),
        "flow_layers_two_statements": (FWD_LAYERS, "- x = layers(x)\n    - x = layers(x)", "KV cache"),
        "flow_lambda": (RESID, "- 'x = (lambda: x)()'\n      - h = mlp", "only modules can be called"),
        "flow_attribute": (RESID, "- x = x.__class__\n      - h = mlp", "attribute"),
        "flow_walrus": (RESID, "- x = (y := x)\n      - h = mlp", "syntax error"),
    }
    for name, (old, new, expect) in edits.items():
        b.compile(name, "dataflow", _edit(old, new), expect)


def _serves_cases(b: _Builder) -> None:
    for name, arch in {
        "serves_pipeline": "pipeline",
        "serves_automodel": "AutoModelForCausalLM",
        "serves_config_class": "LlamaConfig",
        "serves_dunder": "__class__",
        "serves_dotted": "os.system",
        "serves_missing": "NoSuchModelForCausalLM",
    }.items():
        text = _edit("architectures: [LlamaForCausalLM]", f"architectures: ['{arch}']")
        b.add(
            name,
            "serves",
            ["check", b.spec(name, text)],
            "model class" if arch != "NoSuchModelForCausalLM" else "has no class",
        )


def _index(d: Path, doc: object) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps(doc))


def _checkpoint_cases(b: _Builder) -> None:
    good_keys = sorted(
        json.loads(
            (b.good / "model.safetensors").read_bytes()[
                8 : 8 + struct.unpack("<Q", (b.good / "model.safetensors").read_bytes()[:8])[0]
            ]
        )
    )
    good_keys = [k for k in good_keys if k != "__metadata__"]

    def wm(shard: object) -> Callable[[Path], None]:
        return lambda d: _index(d, {"weight_map": {k: shard for k in good_keys}})

    b.ckpt_case(
        "index_weight_map_list",
        lambda d: _index(d, {"weight_map": ["model.safetensors"]}),
        "`weight_map` must be a JSON object",
    )
    b.ckpt_case("index_weight_map_ints", wm(7), "shard names must be non-empty strings")
    b.ckpt_case(
        "index_weight_map_mixed",
        lambda d: _index(d, {"weight_map": {**{k: "model.safetensors" for k in good_keys}, "x": [1]}}),
        "shard names must be non-empty strings",
    )
    b.ckpt_case(
        "index_not_utf8",
        lambda d: (d / "model.safetensors.index.json").write_bytes(b'{"weight_map": "\xff"}'),
        "not UTF-8",
    )
    b.ckpt_case("index_not_json", lambda d: (d / "model.safetensors.index.json").write_text("{"), "not valid JSON")
    b.ckpt_case(
        "index_deep_200k", lambda d: (d / "model.safetensors.index.json").write_text("[" * 200_000), "nested too deeply"
    )
    b.ckpt_case("index_is_fifo", lambda d: os.mkfifo(d / "model.safetensors.index.json"), "is a FIFO", heavy=True)
    b.ckpt_case("config_not_json", lambda d: (d / "config.json").write_text("{'a': 1}"), "not valid JSON")
    b.ckpt_case(
        "config_utf16",
        lambda d: (d / "config.json").write_bytes((b.good / "config.json").read_text().encode("utf-16")),
        "JSON must be UTF-8",
    )
    b.ckpt_case("config_list", lambda d: (d / "config.json").write_text("[]"), "expected a JSON object")
    b.ckpt_case("config_deep", lambda d: (d / "config.json").write_text('{"a":' * 100_000), "nested too deeply")
    b.ckpt_case(
        "config_hidden_infinity",
        lambda d: (d / "config.json").write_text(
            (b.good / "config.json").read_text().replace('"hidden_size": 128', '"hidden_size": Infinity')
        ),
        "HF config `hidden_size`",
    )
    b.ckpt_case("config_missing", lambda d: (d / "config.json").unlink(), "no config.json")

    def dev_zero_config(d: Path) -> None:
        (d / "config.json").unlink()
        os.symlink("/dev/zero", d / "config.json")

    b.ckpt_case("config_is_dev_zero", dev_zero_config, "character device", heavy=True)
    b.ckpt_case("no_shards", lambda d: None, "no *.safetensors", weights=False)
    b.ckpt_case("shard_is_fifo", lambda d: os.mkfifo(d / "model.safetensors"), "is a FIFO", weights=False, heavy=True)
    b.ckpt_case(
        "shard_is_dev_zero",
        lambda d: os.symlink("/dev/zero", d / "model.safetensors"),
        "character device",
        weights=False,
        heavy=True,
    )
    hdr = b.root / "raw"
    hdr.mkdir()

    def st(
        name: str, header: object = None, data: bytes = bytes(16), raw: bytes | None = None
    ) -> Callable[[Path], None]:
        return lambda d: _safetensors(d / "model.safetensors", header, data, raw)

    t = {"dtype": "F32", "shape": [2]}
    headers = {
        "st_negative_offsets": (
            {"a": {**t, "data_offsets": [-8, 0]}, "b": {**t, "data_offsets": [0, 8]}},
            "begin <= end",
        ),
        "st_overlap": ({"a": {**t, "data_offsets": [0, 8]}, "b": {**t, "data_offsets": [4, 12]}}, "overlap"),
        "st_reads_header": ({"a": {**t, "data_offsets": [0, 8]}, "b": {**t, "data_offsets": [0, 8]}}, "overlap"),
        "st_out_of_range": ({"a": {**t, "data_offsets": [0, 8]}, "b": {**t, "data_offsets": [8, 10**15]}}, "needs 8"),
        "st_past_end": ({"a": {**t, "data_offsets": [0, 8]}, "b": {**t, "data_offsets": [16, 24]}}, "ends at byte 24"),
        "st_size_mismatch": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, "needs 12 bytes"),
        "st_dtype_list": ({"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, "unknown dtype"),
        "st_dtype_unknown": ({"a": {"dtype": "C64", "shape": [2], "data_offsets": [0, 8]}}, "unknown dtype"),
        "st_shape_strings": ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, "has shape"),
        "st_shape_negative": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "has shape"),
        "st_shape_bool": ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, "has shape"),
        "st_offsets_float": ({"a": {**t, "data_offsets": [0.0, 8.0]}}, "data_offsets"),
        "st_huge_shape": ({"a": {"dtype": "F32", "shape": [2**61, 2**61], "data_offsets": [0, 8]}}, "needs"),
        "st_extra_field": ({"a": {**t, "data_offsets": [0, 8], "x": 1}}, "exactly dtype, shape, data_offsets"),
        "st_metadata_bad": ({"__metadata__": {"a": 1}}, "__metadata__"),
        "st_header_list": ([1, 2], "not a JSON object"),
    }
    for name, (header, expect) in headers.items():
        b.ckpt_case(name, st(name, header), expect, weights=False)
    b.ckpt_case(
        "st_header_deep_200k", st("deep", raw=b"[" * 200_000 + b"]" * 200_000), "nested too deeply", weights=False
    )
    b.ckpt_case(
        "st_header_deep_200k_obj",
        st("deepo", raw=b'{"a":' * 200_000 + b"1" + b"}" * 200_000),
        "nested too deeply",
        weights=False,
    )
    b.ckpt_case(
        "st_header_length_huge",
        lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 64),
        "not a safetensors file",
        weights=False,
    )
    b.ckpt_case(
        "st_empty_file", lambda d: (d / "model.safetensors").write_bytes(b""), "not a safetensors file", weights=False
    )
    b.ckpt_case("st_header_not_utf8", st("nu", raw=b'{"\xff": 1}'), "not JSON", weights=False)
    b.ckpt_case(
        "st_truncated",
        lambda d: (d / "model.safetensors").write_bytes((b.good / "model.safetensors").read_bytes()[:-1000]),
        "truncated",
        weights=False,
    )


def _unsafe_cases(b: _Builder) -> None:
    def idx(shard: str) -> Callable[[Path], None]:
        keys = ["model.embed_tokens.weight"]
        return lambda d: _index(d, {"weight_map": dict.fromkeys(keys, shard)})

    other = b.root / "other"
    other.mkdir()
    os.symlink(b.good / "model.safetensors", other / "model.safetensors")
    for name, shard in {
        "unsafe_shard_parent": "../../other/model.safetensors",
        "unsafe_shard_absolute": str(other / "model.safetensors"),
        "unsafe_shard_etc_passwd": "/etc/passwd",
        "unsafe_shard_proc_environ": "/proc/self/environ",
        "unsafe_shard_dotdot_inside": "sub/../../x.safetensors",
    }.items():
        b.ckpt_case(name, idx(shard), "outside the checkpoint directory", group="unsafe")
    b.ckpt_case(
        "unsafe_symlink_to_passwd",
        lambda d: os.symlink("/etc/passwd", d / "model.safetensors"),
        "not a safetensors file",
        weights=False,
        group="unsafe",
    )
    b.ckpt_case(
        "unsafe_symlink_to_environ",
        lambda d: os.symlink("/proc/self/environ", d / "model.safetensors"),
        "not a safetensors file",
        weights=False,
        group="unsafe",
    )
    # header JSON bytes loaded as a tensor: offsets pointing before the data section / overlapping
    b.ckpt_case(
        "unsafe_offsets_into_header",
        lambda d: _safetensors(
            d / "model.safetensors",
            {"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [-64, -48]}},
            bytes(16),
        ),
        "begin <= end",
        weights=False,
        group="unsafe",
    )
    for name, edit in {
        "unsafe_kv_attn_twice": (BODY_ATTN, "- h = attn(attn(x))"),
        "unsafe_kv_layers_twice": (FWD_LAYERS, "- x = layers(layers(x))"),
    }.items():
        b.compile(name, "unsafe", _edit(*edit), "KV cache")


def _cli_cases(b: _Builder) -> None:
    llama = str(SPECS / "llama.yaml")
    good = str(b.good)
    f = b.root / "afile"
    f.write_text("x")
    b.add(
        "cli_plan_json_missing_dir",
        "cli",
        ["compile", llama, "--model", good, "--plan-json", str(b.root / "no" / "p.json")],
        "does not exist",
    )
    b.add(
        "cli_plan_json_is_dir", "cli", ["compile", llama, "--model", good, "--plan-json", str(b.root)], "is a directory"
    )
    b.add(
        "cli_plan_json_without_model", "cli", ["compile", llama, "--plan-json", str(b.root / "p.json")], "needs --model"
    )
    b.add("cli_out_is_file", "cli", ["compile", llama, "-o", str(f)], "not a directory")
    b.add("cli_out_under_file", "cli", ["compile", llama, "-o", str(f / "sub")], "cannot create")
    b.add("cli_model_missing", "cli", ["compile", llama, "--model", str(b.root / "none")], "no such directory")
    b.add("cli_model_is_file", "cli", ["compile", llama, "--model", str(f)], "not a directory")
    b.add("cli_check_model_missing", "cli", ["check", llama, "--model", str(b.root / "none")], "no such directory")
    b.add("cli_device_cuda", "cli", ["check", llama, "--device", "cuda"], "--device cuda")
    b.add("cli_device_bogus", "cli", ["check", llama, "--device", "tpu:x"], "expected cpu, cuda")
    b.add("cli_tp_zero", "cli", ["compile", llama, "--tp", "0"], "--tp")
    b.add("cli_tp_huge", "cli", ["compile", llama, "--tp", str(10**9)], "--tp")
    b.add("cli_check_tp_huge", "cli", ["check", llama, "--tp", str(10**9)], "--tp")
    b.add("cli_seed_huge", "cli", ["check", llama, "--seed", str(10**30)], "--seed")
    b.add("cli_tolerance_nan", "cli", ["check", llama, "--tolerance", "nan"], "--tolerance")
    b.add(
        "cli_max_new_tokens_negative",
        "cli",
        ["generate", "--model", good, "--max-new-tokens", "-5", "hi"],
        "--max-new-tokens",
    )
    b.add(
        "cli_max_new_tokens_huge",
        "cli",
        ["generate", "--model", good, "--max-new-tokens", str(10**9), "hi"],
        "--max-new-tokens",
    )
    b.add(
        "cli_max_new_tokens_expr",
        "cli",
        ["generate", "--model", good, "--max-new-tokens", "10**9", "hi"],
        "invalid int value",
        codes=(2,),
    )
    b.add("cli_generate_device_cuda", "cli", ["generate", "--model", good, "--device", "cuda", "hi"], "--device cuda")
    b.add("cli_generate_model_missing", "cli", ["generate", "--model", str(b.root / "none"), "hi"], "no such directory")
    out = b.root / "halfwritten"
    b.add(
        "cli_out_json_failure",
        "cli",
        [
            "compile",
            b.spec(
                "out_datetime", _edit("  rope:      {rope: {}}", "  rope:      {rope: {}}\n  when: {value: 2001-12-14}")
            ),
            "-o",
            str(out),
        ],
        "datetime",
    )
    b.add("cli_validate_nothing", "cli", ["validate", str(b.root / "ckpt")], "no .yaml specs")


def _check_cases(b: _Builder) -> None:
    """transformers' own failures during `check` (our side accepts the checkpoint)."""

    def remote_code(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")

    def bad_padding(d: Path) -> None:
        """Fine for us (we do not read pad_token_id); transformers' embedding refuses padding_idx >= vocab."""
        cfg = json.loads((d / "config.json").read_text())
        cfg["pad_token_id"] = 10**6
        (d / "config.json").write_text(json.dumps(cfg))

    for name, change, expect in (
        ("check_remote_code_config", remote_code, "PASS"),
        ("check_transformers_refuses", bad_padding, "transformers could not load"),
    ):
        d = b.ckpt(name, change)
        codes = (0,) if expect == "PASS" else (1,)
        b.add(name, "check", ["check", str(SPECS / "llama.yaml"), "--model", d], expect, codes=codes)


def build(root: Path, good: Path) -> list[Case]:
    """Write every case's files under `root` and return the cases."""
    b = _Builder(root, good)
    for part in (
        _yaml_cases,
        _expr_cases,
        _config_cases,
        _dataflow_cases,
        _serves_cases,
        _checkpoint_cases,
        _unsafe_cases,
        _cli_cases,
        _check_cases,
    ):
        part(b)
    names = [c.name for c in b.cases]
    if len(names) != len(set(names)):
        raise AssertionError("duplicate case names")
    return b.cases
