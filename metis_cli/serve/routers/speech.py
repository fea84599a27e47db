"""The OpenAI-compatible surface: POST /v1/audio/speech, GET /v1/models[/{id}]."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from metis_cli import options
from metis_cli.serve import media
from metis_cli.serve.bodies import read_json
from metis_cli.serve.errors import ApiError
from metis_cli.serve.requests import AUDIO_RESPONSE, SpeechRequest, error_responses, json_body, parse_json
from metis_cli.serve.routers import service_of
from metis_cli.serve.service import make_job
from metis_cli.serve.streaming import check_stream_format

OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "metis")

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/audio/speech",
    summary="Speak a text with a registered voice (OpenAI-compatible)",
    openapi_extra=json_body(SpeechRequest),
    response_class=Response,
    responses={**AUDIO_RESPONSE, **error_responses(400, 401, 404, 408, 413, 415, 422, 429, 503, 504)},
)
async def speech(request: Request) -> Response:
    service = service_of(request)
    body = parse_json(
        SpeechRequest, await read_json(request, service.limits.max_upload_bytes, service.config.body_timeout)
    )
    service.batcher("tts")  # 404 / 503 when TTS is not served here
    model = service.pipelines["tts"].model_name
    if body.model not in (model, *OPENAI_TTS_MODELS):
        raise ApiError(
            404, f"model: no model {body.model!r} (use {model} or one of {', '.join(OPENAI_TTS_MODELS)})",
            "model", "model_not_found",
        )  # fmt: skip
    text = service.text(body.input, "input")
    voice = service.voice(body.voice_key)
    service.check_frontends((text, body.language), (voice.text, voice.language))
    fmt = service.format(body.response_format)
    check_stream_format(body.stream_format, fmt)
    dec = service.decoding("tts", body.overrides())
    duration = service.duration(body.duration, text)
    if body.speed != 1.0:
        if duration is not None:
            raise ApiError(422, "speed: give speed or duration, not both", "speed", "invalid_value")
        rule = _speed_duration(media.seconds(voice.audio), voice.text, text, body.speed)
        duration = min(rule, service.max_duration(text))
    job = make_job(
        "tts", {"prompt": voice.audio}, seed=body.seed, text=text, prompt_text=voice.text,
        language=body.language, prompt_language=voice.language, duration=duration,
    )  # fmt: skip
    return await service.answer(request, "tts", job, dec, fmt, body.stream_format)


def _speed_duration(prompt_seconds: float, prompt_text: str, text: str, speed: float) -> float:
    """The length rule's duration (prompt seconds × UTF-8 byte ratio, as `text.target_length`) / speed."""
    rule = prompt_seconds * len(text.encode("utf-8")) / max(len(prompt_text.encode("utf-8")), 1)
    return min(max(rule / speed, 0.1), options.MAX_DURATION_SECONDS)


def _model(task: str, pipe: Any) -> dict[str, Any]:
    return {"id": pipe.model_name, "object": "model", "owned_by": "metis", "task": task}


@router.get("/v1/models", summary="The models served here, one per task")
async def models(request: Request) -> dict[str, Any]:
    data = [_model(task, pipe) for task, pipe in service_of(request).pipelines.items()]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id}", summary="One served model", responses=error_responses(401, 404))
async def model(request: Request, model_id: str) -> dict[str, Any]:
    for task, pipe in service_of(request).pipelines.items():
        if pipe.model_name == model_id:
            return _model(task, pipe)
    raise ApiError(404, f"model_id: no model {model_id!r} is served here", "model_id", "model_not_found")
