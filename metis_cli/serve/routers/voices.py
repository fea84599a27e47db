"""Registered voices: GET/POST /v1/voices, GET/DELETE /v1/voices/{voice_id} (id or name), and
GET /v1/audio/voices (the listing vLLM-Omni serves)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from metis_cli.serve import media
from metis_cli.serve.bodies import read_form, text_fields, upload
from metis_cli.serve.errors import ApiError
from metis_cli.serve.requests import VoiceForm, error_responses, form_body, parse_form
from metis_cli.serve.routers import service_of
from metis_cli.serve.voices import length_warnings

router = APIRouter(tags=["voices"])


@router.get("/v1/voices", summary="The registered voices")
async def list_voices(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [v.public() for v in service_of(request).voices.list()]}


@router.get("/v1/audio/voices", summary="Voice names, and the uploaded voices (vLLM-Omni's listing)")
async def audio_voices(request: Request) -> dict[str, Any]:
    listed = service_of(request).voices.list()
    return {
        "voices": sorted(v.name for v in listed),
        "uploaded_voices": [v.public() for v in listed if v.source == "upload"],
    }


@router.post(
    "/v1/voices",
    summary="Register a voice: prompt audio + its transcript",
    status_code=201,
    openapi_extra=form_body(
        VoiceForm, {"audio": "The voice's prompt audio (3-30 s; at most --max-voice-seconds)."}, ("audio",)
    ),
    responses=error_responses(400, 401, 408, 409, 413, 415, 422),
)
async def add_voice(request: Request) -> JSONResponse:
    service = service_of(request)
    form = await read_form(request, service.limits.max_upload_bytes, service.config.body_timeout)
    fields = parse_form(VoiceForm, text_fields(form, ("audio",)))
    audio = await upload(form, "audio", service.limits.max_voice_seconds)
    if audio is None:
        raise ApiError(422, "missing file field: audio", "audio", "missing_field")
    text = service.text(fields.text, "text")
    language = None if fields.language == "auto" else fields.language
    try:
        voice = service.voices.add(audio, text, language, fields.name)
    except KeyError:
        raise ApiError(
            409, f"name: {fields.name!r} is taken (a voice's name or id, or shaped like an id)", "name",
            "voice_exists",
        ) from None  # fmt: skip
    except OverflowError as exc:
        raise ApiError(409, str(exc), None, "too_many_voices") from None
    warnings = length_warnings(media.seconds(audio))
    return JSONResponse({**voice.public(), **({"warnings": warnings} if warnings else {})}, status_code=201)


@router.get("/v1/voices/{voice_id}", summary="One voice (id or name)", responses=error_responses(401, 404))
async def get_voice(request: Request, voice_id: str) -> dict[str, Any]:
    return service_of(request).voice(voice_id, "voice_id").public()


@router.delete(
    "/v1/voices/{voice_id}",
    summary="Delete an uploaded voice (id or name)",
    responses=error_responses(401, 403, 404),
)
async def delete_voice(request: Request, voice_id: str) -> dict[str, Any]:
    try:
        voice = service_of(request).voices.delete(voice_id)
    except KeyError:
        raise ApiError(
            404, f"voice_id: no uploaded voice {voice_id!r}", "voice_id", "voice_not_found"
        ) from None
    except PermissionError:
        raise ApiError(
            403, f"voice_id: {voice_id!r} comes from the server's voices file", "voice_id", "read_only"
        ) from None
    service_of(request).forget_voice(voice)  # its pinned prompt encodings go too
    return {"id": voice.id, "object": "voice", "deleted": True}
