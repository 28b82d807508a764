"""OpenAI request bodies (pydantic, strict types): what `/v1/completions` and `/v1/chat/completions` accept.

Unknown fields are ignored, as the OpenAI API does; wrong types and out-of-range values
are 400s whose `param` names the field (see `errors.py`). Ranges the engine also checks
(`SamplingParams`) are repeated here so that the error comes from the HTTP edge with the
field's name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

Number = Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt  # JSON allows NaN/Infinity: not here
TokenIds = list[StrictInt]


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (valid JSON escape, invalid Unicode)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        found = _lone_surrogate(item, sub)
        if found is not None:
            return found
    return None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints (OpenAI names, plus vLLM-style extras)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=64)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] = 0.0
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] = 0.0
    logit_bias: dict[str, Annotated[Number, Field(ge=-100, le=100)]] | None = None
    user: StrictStr | None = None
    # vLLM-style extras
    top_k: Annotated[StrictInt, Field(ge=-1)] = 0
    min_p: Annotated[Number, Field(ge=0, le=1)] = 0.0
    repetition_penalty: Annotated[Number, Field(gt=0)] = 1.0
    ignore_eos: StrictBool = False
    min_tokens: Annotated[StrictInt, Field(ge=0)] = 0
    stop_token_ids: list[StrictInt] | None = None
    skip_special_tokens: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _lone_surrogate(data, "")
        if where:
            raise PydanticCustomError(
                "invalid_unicode",
                "{param}: contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode",
                {"param": where},
            )
        return data

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in items):
            raise ValueError("must not contain an empty string")
        if len(items) > 16:
            raise ValueError("at most 16 stop strings are allowed")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids (integers as strings), got {key!r}")
        return v

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_Sampling):
    prompt: Any  # checked below: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, v: Any) -> str | list[str] | list[int] | list[list[int]]:
        def ints(x: Any) -> bool:
            return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        ok = isinstance(v, str) or (
            isinstance(v, list) and v and (all(isinstance(p, str) for p in v) or ints(v) or all(ints(p) for p in v))
        )
        if not ok:
            raise ValueError(
                "must be a string, a non-empty list of strings, a list of token ids, or a list of lists of token ids"
            )
        return v  # type: ignore[no-any-return]

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo=true is not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("is not supported")
        return v


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def as_template_dict(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    add_generation_prompt: StrictBool = True
