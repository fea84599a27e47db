"""The typed requests of `metis serve`: one Pydantic model per request body.

Field bounds and help texts come from the option definitions in `metis_cli.options` (the
CLI's `--steps` range is the `steps` field's range), so `/docs` and `/openapi.json` show them
and a bad value is 422 with the option's own one-line message, naming the request field.
JSON bodies are validated strictly (`"steps": 2.0` is not an integer, `"model": 1` is not a
string); multipart text fields are strings and are converted. Limits that depend on the
server's settings (text length, steps, upload length) are checked by the endpoints.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metis_cli import options
from metis_cli.errors import UsageError
from metis_cli.media.encode import CONTENT_TYPES, FORMATS
from metis_cli.serve.errors import ApiError

Model = TypeVar("Model", bound=BaseModel)
Language = Literal[options.LANGUAGE_CHOICES]  # type: ignore[valid-type]
Format = Literal[FORMATS]  # type: ignore[valid-type]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_SPEED = 4.0
MIN_SPEED = 0.25
_CHECKS: dict[str, Callable[[str, Any], None]] = {}  # field -> the option's check (its message)


def option(group: type, name: str, **extra: Any) -> Any:
    """A Pydantic field for option `name` of `group`: its help, its bounds, default None."""
    meta = {f.name: f for f in fields(group)}[name].metadata
    check = meta.get("check")
    kw: dict[str, Any] = {"description": meta["help"]}
    bounds = getattr(check, "bounds", None)
    if bounds is not None:
        lo, hi, above, _ = bounds
        kw["gt" if above else "ge"] = lo
        if hi is not None:
            kw["le"] = hi
    if check is not None:
        _CHECKS[name] = check
    return Field(None, **{**kw, **extra})


class Strict(BaseModel):
    """Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class Decoding(Strict):
    """Decoding overrides and the seed (None: the server's settings; seed: random)."""

    steps: int | None = option(options.DecodingOptions, "steps")
    cfg: float | None = option(options.DecodingOptions, "cfg")
    temperature: float | None = option(options.DecodingOptions, "temperature")
    s2a_steps: str | None = option(options.DecodingOptions, "s2a_steps", examples=["40,16"])
    s2a_temperature: float | None = option(options.DecodingOptions, "s2a_temperature")
    seed: int | None = option(options.JobDefaults, "seed", ge=0, le=options.MAX_SEED)

    def overrides(self) -> dict[str, Any]:
        """The decoding options given (for `Pipeline.decoding`)."""
        return {
            k: getattr(self, k)
            for k in options.names(options.DecodingOptions)
            if getattr(self, k) is not None
        }


class VoiceRef(Strict):
    """A registered voice named as an object (the OpenAI API's newer form)."""

    id: str = Field(description="The name or id of a registered voice.")


class SpeechRequest(Decoding):
    """POST /v1/audio/speech (OpenAI-compatible)."""

    model: str = Field(description="This server's TTS model name (GET /v1/models), or tts-1, tts-1-hd, ...")
    input: str = Field(description="The text to speak (at most the server's --max-text-chars).")
    voice: str | VoiceRef = Field(description='A registered voice: its name or id, or {"id": ...}.')
    response_format: Format = Field("mp3", description="Audio format of the response.")
    speed: float = Field(
        1.0,
        ge=MIN_SPEED,
        le=MAX_SPEED,
        description="Speaking rate (sets the target duration; not with duration).",
    )
    instructions: str | None = Field(None, description="Accepted for compatibility and ignored.")
    stream_format: Literal["audio", "sse"] | None = Field(
        None,
        description="Stream the answer: 'audio' (the audio as it is made, chunked transfer) or 'sse' "
        "(speech.audio.delta events with base64 audio, then speech.audio.done with the usage); "
        "absent: the whole file.",
    )
    language: Language | None = Field(None, description="Language of the input (default: detect).")
    duration: float | None = Field(
        None, gt=0, le=options.MAX_DURATION_SECONDS, description="Target length of the speech (seconds)."
    )

    @property
    def voice_key(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class TaskForm(Decoding):
    """The text fields of POST /v1/enhance, /v1/tse, /v1/vc, /v1/tts (multipart/form-data)."""

    response_format: Format = Field("wav", description="Audio format of the response.")
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="Stream the answer as it is made ('audio' or 'sse', as /v1/audio/speech)."
    )


class VoiceTaskForm(TaskForm):
    """/v1/tse, /v1/vc: the speaker audio may be a registered voice instead of a file."""

    voice: str | None = Field(
        None, description="A registered voice (name or id) instead of the speaker file."
    )


class TtsForm(VoiceTaskForm):
    """POST /v1/tts: the prompt is an upload with its transcript, or a registered voice."""

    text: str = Field(description="The text to speak.")
    prompt_text: str | None = Field(None, description="Transcript of the prompt (not with voice).")
    language: Language | None = Field(None, description="Language of the text (default: detect).")
    prompt_language: Language | None = Field(None, description="Language of the prompt (default: detect).")
    duration: float | None = Field(
        None, gt=0, le=options.MAX_DURATION_SECONDS, description="Target length of the speech (seconds)."
    )


class VoiceForm(Strict):
    """The text fields of POST /v1/voices (multipart/form-data, with the file field `audio`)."""

    text: str = Field(description="Transcript of the audio.")
    language: Language | None = Field(None, description="Language of the audio (default: detect).")
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="1-64 letters, digits, '_', '.', '-' (default: the id)."
    )


class ErrorDetail(BaseModel):
    message: str = Field(description="One line.")
    type: str
    param: str | None = Field(description="The request field the error is about.")
    code: str | None


class ErrorBody(BaseModel):
    """Every error answer (the OpenAI shape)."""

    error: ErrorDetail


# ---- validation --------------------------------------------------------------------------------------


def parse_json(model: type[Model], raw: bytes) -> Model:
    """A JSON body (already known to be an object) as `model`, strictly; 422 naming the field."""
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise invalid(model, exc.errors()) from None


def parse_form(model: type[Model], values: Mapping[str, str]) -> Model:
    """Multipart text fields as `model`; 422 naming the field."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise invalid(model, exc.errors()) from None


def invalid(model: type[BaseModel], errors: list[Any]) -> ApiError:
    """The one answer for a list of Pydantic errors: unknown fields first, then missing ones."""
    for kind, words, code in (
        ("extra_forbidden", "unknown", "unknown_field"),
        ("missing", "missing", "missing_field"),
    ):
        names = [str(e["loc"][0]) for e in errors if e["type"] == kind and e["loc"]]
        if names:
            return ApiError(422, f"{words} field(s): {', '.join(names)}", names[0], code)
    first = errors[0]
    name = str(first["loc"][0]) if first["loc"] else None
    if name is None:
        return ApiError(400, "request body must be a JSON object", None, "invalid_json")
    return ApiError(422, f"{name}: {_describe(model, name, first)}", name, "invalid_value")


def _describe(model: type[BaseModel], name: str, error: Any) -> str:
    kind, value = error["type"], error.get("input")
    if kind.startswith(("int_", "float_", "string_type", "bool_")):
        what = {"int": "an integer", "flo": "a number", "str": "a string", "boo": "true or false"}[kind[:3]]
        if name == "voice":
            what = 'a voice name or id, or {"id": ...}'
        return f"must be {what} (got {value!r})"
    if kind == "literal_error":
        return f"must be one of {', '.join(map(str, _choices(model, name)))} (got {value!r})"
    if kind.startswith(("greater_than", "less_than")):
        check = _CHECKS.get(name)
        if check is not None:
            try:
                check(name, value)
            except UsageError as exc:
                return str(exc).partition(": ")[2]
        lo, hi = _bounds(model, name)
        if lo is not None and hi is not None:
            return f"must be within {lo}-{hi} (got {value!r})"
        return error["msg"].lower() + f" (got {value!r})"
    if kind == "string_pattern_mismatch" and name == "name":
        return "1-64 letters, digits, '_', '.', '-' (no path)"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}"


def _choices(model: type[BaseModel], name: str) -> tuple[Any, ...]:
    annotation = model.model_fields[name].annotation
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def _bounds(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in model.model_fields[name].metadata:
        lo = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else getattr(m, "gt", lo)
        hi = getattr(m, "le", None) if getattr(m, "le", None) is not None else getattr(m, "lt", hi)
        if lo is not None and hi is not None:
            break
    return lo, hi


# ---- OpenAPI --------------------------------------------------------------------------------------------


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with its local $refs replaced by the definitions (request bodies stand alone)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.split("/")[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON request body of `model`."""
    schema = model.model_json_schema()
    body = _inline(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


def form_body(model: type[BaseModel], files: Mapping[str, str], required: tuple[str, ...]) -> dict[str, Any]:
    """`openapi_extra` documenting a multipart body: `model`'s text fields plus file fields
    ({name: description}; `required`: the files that must be given)."""
    schema = model.model_json_schema()
    body = _inline(schema, schema.get("$defs", {}))
    for name, text in files.items():
        body["properties"][name] = {"type": "string", "format": "binary", "description": text}
    body["required"] = [*body.get("required", []), *required]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


ERRORS = {
    400: "Malformed body (not JSON, not multipart, not an object).",
    408: "The body did not arrive within --body-timeout.",
    401: "Missing or wrong API key.",
    403: "The voice comes from the server's voices file (read-only).",
    404: "Unknown model, voice or task not served here.",
    409: "A voice of that name exists, or too many voices.",
    413: "Body, upload, audio or text over this server's limits.",
    415: "Wrong Content-Type.",
    422: "A field's value is invalid (the field is named in error.param).",
    429: "The queue is full (see Retry-After).",
    503: "The models are not loaded (yet), or the server is stopping.",
    504: "Not finished within the request timeout.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these error statuses (all in the OpenAI error shape)."""
    return {c: {"model": ErrorBody, "description": ERRORS[c]} for c in codes}


AUDIO_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audio, in the requested format.",
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in CONTENT_TYPES.values()},
    }
}


__all__ = [
    "ErrorBody",
    "SpeechRequest",
    "TaskForm",
    "TtsForm",
    "VoiceForm",
    "VoiceRef",
    "VoiceTaskForm",
    "error_responses",
    "form_body",
    "json_body",
    "parse_form",
    "parse_json",
]
