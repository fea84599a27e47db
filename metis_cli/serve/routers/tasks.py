"""The task endpoints: POST /v1/enhance, /v1/tse, /v1/vc, /v1/tts (multipart/form-data).

Each file field is one of the task's audio inputs; the speaker input of tse/vc/tts may be a
registered voice (`voice`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from metis_cli.options import command_of
from metis_cli.serve.bodies import read_form, text_fields, upload
from metis_cli.serve.errors import ApiError
from metis_cli.serve.requests import (
    AUDIO_RESPONSE,
    TaskForm,
    TtsForm,
    VoiceTaskForm,
    error_responses,
    form_body,
    parse_form,
)
from metis_cli.serve.routers import service_of
from metis_cli.serve.service import Service, make_job
from metis_cli.serve.streaming import check_stream_format


@dataclass(frozen=True)
class Route:
    """One task endpoint: its task, file fields ({role: description}), voice role, form model."""

    task: str
    files: dict[str, str]
    voice_role: str | None
    form: type[TaskForm]
    summary: str


ROUTES = {
    command_of("se"): Route("se", {"input": "Noisy speech."}, None, TaskForm, "Speech enhancement"),
    "tse": Route(
        "tse",
        {"mix": "The mixture.", "enrol": "Enrolment of the target speaker (or voice)."},
        "enrol",
        VoiceTaskForm,
        "Target speaker extraction",
    ),  # fmt: skip
    "vc": Route(
        "vc",
        {"source": "Speech to convert.", "reference": "The target voice (or voice)."},
        "reference",
        VoiceTaskForm,
        "Voice conversion",
    ),  # fmt: skip
    "tts": Route(
        "tts",
        {"prompt": "Speaker prompt, 3-30 s (or voice + no prompt_text)."},
        "prompt",
        TtsForm,
        "Text to speech with an uploaded prompt or a registered voice",
    ),  # fmt: skip
}

router = APIRouter(tags=["tasks"])


async def run_task(request: Request, route: Route) -> Response:
    """Read the form, build the job, queue it, answer with its audio."""
    service = service_of(request)
    service.batcher(route.task)  # 404 / 503 before reading the body
    form = await read_form(request, service.limits.max_upload_bytes, service.config.body_timeout)
    fields = parse_form(route.form, text_fields(form, tuple(route.files)))
    fmt = service.format(fields.response_format)
    check_stream_format(fields.stream_format, fmt)
    dec = service.decoding(route.task, fields.overrides())
    inputs, voice = await _inputs(service, form, route, getattr(fields, "voice", None))
    kw: dict[str, Any] = {"seed": fields.seed}
    if isinstance(fields, TtsForm):
        text = service.text(fields.text, "text")
        kw.update(text=text, language=fields.language, duration=service.duration(fields.duration, text))
        if voice is not None:
            if fields.prompt_text is not None:
                raise ApiError(422, "prompt_text: a voice brings its own transcript", "prompt_text")
            kw.update(prompt_text=voice.text, prompt_language=voice.language)
        else:
            kw.update(prompt_text=service.text(fields.prompt_text, "prompt_text"))
            kw.update(prompt_language=fields.prompt_language)
    if isinstance(fields, TtsForm):
        service.check_frontends((kw["text"], kw["language"]), (kw["prompt_text"], kw["prompt_language"]))
    job = make_job(route.task, inputs, **kw)
    return await service.answer(request, route.task, job, dec, fmt, fields.stream_format)


async def _inputs(service: Service, form: FormData, route: Route, voice_key: str | None) -> tuple[dict, Any]:
    """The decoded uploads by role, the speaker role filled from a registered voice if named."""
    inputs: dict[str, Any] = {}
    voice = None
    if voice_key is not None and route.voice_role is not None:
        voice = service.voice(voice_key)
        if form.get(route.voice_role) is not None:
            raise ApiError(
                422, f"give {route.voice_role} or voice, not both", route.voice_role, "invalid_value"
            )
        inputs[route.voice_role] = voice.audio
    for role in route.files:
        if role not in inputs:
            limits = service.limits  # a speaker prompt is bounded like a voice
            audio = await upload(
                form, role, limits.max_voice_seconds if role == route.voice_role else limits.max_audio_seconds
            )
            if audio is None:
                raise ApiError(422, f"missing file field: {role}", role, "missing_field")
            inputs[role] = audio
    return inputs, voice


def _endpoint(name: str, route: Route) -> None:
    async def endpoint(request: Request) -> Response:
        return await run_task(request, route)

    endpoint.__name__ = f"post_{name}"
    required = tuple(r for r in route.files if r != route.voice_role)
    router.post(
        f"/v1/{name}",
        summary=route.summary,
        openapi_extra=form_body(route.form, route.files, required),
        response_class=Response,
        responses={**AUDIO_RESPONSE, **error_responses(400, 401, 404, 408, 413, 415, 422, 429, 503, 504)},
    )(endpoint)


for _name, _route in ROUTES.items():
    _endpoint(_name, _route)
