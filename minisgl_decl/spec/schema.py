"""The spec language: pydantic v2 models for one YAML architecture spec.

Only the *shape* of the document is checked here (types, required and unknown keys).
Cross-references (catalogue layer names, config names used by expressions, weight rules
against catalogue parameters) are checked by `minisgl_decl.validate`, which has the catalogue.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

SPEC_VERSION = 1

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]

#: the key of a module declaration holding its condition: `q_norm: {if: qk_norm, layernorm: {...}}`
MODULE_IF = "if"


def _module_decl(decl: dict[str, Any]) -> dict[str, Any]:
    for key, value in decl.items():
        if key == MODULE_IF:
            if not isinstance(value, str | bool):
                raise ValueError(f"`{MODULE_IF}:` is an expression over config names (and `i` in layers)")
        elif value is not None and not isinstance(value, dict):
            raise ValueError(f"the arguments of layer `{key}` are a mapping {{arg: value}}")
        elif isinstance(value, dict):
            for arg, v in value.items():
                if isinstance(v, dict):
                    raise ValueError(f"argument `{arg}` of layer `{key}` is a value or an expression, not a mapping")
    return decl


#: name -> {catalogue_layer: {arg: value}}, optionally with `if: <expression>` (the module exists only
#: where it holds; in the layer stack it may use the layer index `i`)
ModuleDecl = Annotated[dict[str, Any], AfterValidator(_module_decl)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Serves(Strict):
    """Which Hugging Face checkpoints this spec serves."""

    architectures: list[str] = Field(min_length=1, description="HF `architectures` entries, e.g. LlamaForCausalLM")
    model_types: list[str] = Field(default_factory=list, description="HF `model_type` values, e.g. llama")
    transformers_min: str | None = Field(
        None,
        pattern=r"^[0-9]+(\.[0-9]+){0,2}$",
        description="The oldest transformers release whose class for these architectures computes what this "
        "spec describes (`check` uses it as the reference and refuses older releases), e.g. '5.19'",
    )


class FromField(Strict):
    """Read from the HF config under the first alias present (text_config first); else the default."""

    from_: str | list[str] = Field(alias="from", description="HF config key(s) to try in order; `a.b` reads nested")
    default: Any = Field(
        default=None,
        description="Used when no alias is present (or it is null). A string is an expression "
        "over other config names; quote string literals inside it: \"'silu'\".",
    )
    type: Literal["int", "float", "bool", "str", "list", "dict", "any"] = "any"


class ExprField(Strict):
    """Computed from other config names."""

    expr: str
    type: Literal["int", "float", "bool", "str", "list", "dict", "any"] = "any"


class ValueField(Strict):
    """A constant."""

    value: Any


class RopeSource(Strict):
    """Normalise HF rotary settings (4.x `rope_theta`/`rope_scaling`, 5.x `rope_parameters`)."""

    parameters_from: list[str] = Field(default_factory=lambda: ["rope_parameters", "rope_scaling"])
    theta_from: list[str] = Field(default_factory=lambda: ["rope_theta"])
    default_theta: float = 10000.0
    layer_type: str | None = Field(
        default=None, description="Pick this entry when the parameters are nested per layer type (Gemma 3)"
    )
    partial_rotary_from: list[str] = Field(default_factory=lambda: ["partial_rotary_factor"])
    max_position_from: list[str] = Field(default_factory=lambda: ["max_position_embeddings"])
    original_max_position_from: list[str] = Field(default_factory=lambda: ["original_max_position_embeddings"])


class RopeField(Strict):
    rope: RopeSource


def _config_field_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return {FromField: "<from>", ExprField: "<expr>", ValueField: "<value>", RopeField: "<rope>"}[type(value)]
    if isinstance(value, dict):
        for key in ("from", "expr", "value", "rope"):
            if key in value:
                return f"<{key}>"
    return None


ConfigField = Annotated[
    Annotated[FromField, Tag("<from>")]
    | Annotated[ExprField, Tag("<expr>")]
    | Annotated[ValueField, Tag("<value>")]
    | Annotated[RopeField, Tag("<rope>")],
    Discriminator(
        _config_field_kind,
        custom_error_type="config_field_kind",
        custom_error_message="a config entry needs exactly one of `from`, `expr`, `value` or `rope`",
    ),
]


class LayerStack(Strict):
    """The repeated decoder block: its modules and its residual dataflow."""

    repeat: str | int = Field(description="How many layers (expression over config names)")
    modules: dict[Identifier, ModuleDecl] = Field(
        description="name -> {catalogue_layer: {arg: value}}; args may use the layer index `i`; "
        "`if: <expression>` makes a module exist only in the layers where it holds"
    )
    body: list[str] = Field(min_length=1, description="Statements `name = expression` over x and module calls")


class Model(Strict):
    modules: dict[Identifier, ModuleDecl] = Field(
        description="Top-level modules: name -> {catalogue_layer: {arg: value}}, optionally `if: <expression>`"
    )
    layers: LayerStack
    forward: list[str] = Field(
        min_length=1,
        description="Top-level dataflow from `tokens` to `logits`; `layers(x)` runs the whole stack",
    )


class LayoutSpec(Strict):
    """The source's rows along the rule's `dim` are stored in another order (a re-layout).

    View that dim as `split` (sizes; expressions over config names), permute those axes by
    `order`, flatten: target axis j is source axis `order[j]`. GPT-NeoX's per-head fused
    qkv, stored [heads, 3, head_dim], becomes q | k | v with `split: [heads, 3, head_dim]`,
    `order: [1, 0, 2]`. The loader still reads only each rank's rows (several strided reads).
    """

    split: list[str | int] = Field(min_length=2, description="Sizes the dim is viewed as (outermost first)")
    order: list[int] = Field(min_length=2, description="Permutation of the split axes giving the target order")


class SourceSpec(Strict):
    key: str = Field(description="Checkpoint tensor name; `{i}` is the layer index")
    transpose: bool = False
    layout: LayoutSpec | None = Field(default=None, description="Re-layout of the rows along the rule's dim")


def _source_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<key>"
    if isinstance(value, dict | SourceSpec):
        return "<spec>"
    return None


Source = Annotated[
    Annotated[str, Tag("<key>")] | Annotated[SourceSpec, Tag("<spec>")],
    Discriminator(
        _source_kind,
        custom_error_type="weight_source_kind",
        custom_error_message="a weight source is a checkpoint key or a mapping {key: ..., transpose: ...}",
    ),
]


class RuleSpec(Strict):
    """How one runtime parameter is made from checkpoint tensors."""

    from_: Source | None = Field(default=None, alias="from")
    concat: list[Source] | None = Field(default=None, min_length=1)
    dim: int = Field(default=0, description="Dimension along which `concat` parts (or a fused tensor) lie")
    add: float | None = Field(default=None, description="Constant added to every element (e.g. Gemma's +1)")
    tied_to: Source | None = Field(default=None, description="Tensor used instead when `tied_if` is true")
    tied_if: str | bool | None = Field(default=None, description="Expression deciding whether to tie")
    experts: str | int | None = Field(
        default=None,
        description="Stack over expert index `{e}` in range(experts) along a new leading dim (routed experts)",
    )


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<key>"
    if isinstance(value, list):
        return "<concat>"
    if isinstance(value, dict | RuleSpec):
        return "<rule>"
    return None


Rule = Annotated[
    Annotated[str, Tag("<key>")] | Annotated[list[Source], Tag("<concat>")] | Annotated[RuleSpec, Tag("<rule>")],
    Discriminator(
        _rule_kind,
        custom_error_type="weight_rule_kind",
        custom_error_message="a weight rule is a checkpoint key, a list of keys to concatenate, "
        "or a mapping with `from`/`concat`",
    ),
]


class Weights(Strict):
    params: dict[str, Rule] = Field(description="runtime parameter (pattern with {i}) -> rule")
    ignore: list[str] = Field(default_factory=list, description="Checkpoint tensors that are read by nothing")


class Spec(Strict):
    """One architecture spec (the top of a `specs/*.yaml` file)."""

    spec_version: Literal[1]
    extends: str | None = Field(
        default=None,
        description="Another spec this one overrides: a name in the same directory (`llama`) or a relative "
        "path; mappings merge, lists and scalars replace, `key: null` deletes an inherited key",
    )
    name: Identifier
    description: str = ""
    serves: Serves
    config: dict[Identifier, ConfigField]
    model: Model
    weights: Weights
    requires: list[str] = Field(
        default_factory=list,
        description="Expressions over config names that must hold for a checkpoint this spec can serve",
    )
    example_config: dict[str, Any] = Field(
        default_factory=dict, description="A small HF config.json used by `compile`/`check` without --model"
    )
