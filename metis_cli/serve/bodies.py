"""Request bodies read in memory, bounded, with every malformed body a 4xx (never a 500).

The body is read up to `Limits.max_upload_bytes` (413 beyond, with or without a
Content-Length); JSON that is not JSON, nested too deep or holding an integer too long to
convert is 400; a client that leaves mid-upload ends the request quietly (`ClientLeft`).
Multipart uploads stay in memory and are decoded there; nothing a client sends is a path.
"""

from __future__ import annotations

import asyncio
import json

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from metis_cli.errors import MetisError
from metis_cli.media.audio import AudioArray
from metis_cli.serve import media
from metis_cli.serve.errors import ApiError, from_metis

MAX_FILES = 8
MAX_FIELDS = 64


class ClientLeft(Exception):
    """The client closed the connection before its body was complete."""


class _InMemoryMultiPart(MultiPartParser):
    """Starlette's multipart parser with uploads kept in memory (the body is bounded before)."""

    spool_max_size = 1 << 40


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The whole body, at most `limit` bytes (413 beyond, also without a Content-Length),
    within `timeout` seconds (408 beyond: a client sending too slowly)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"request body is {int(declared)} bytes (at most {limit} on this server)", None, "too_large"
        )
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(
                        413,
                        f"request body is over {limit} bytes (the limit on this server)",
                        None,
                        "too_large",
                    )
    except ClientDisconnect:
        raise ClientLeft() from None
    except TimeoutError:
        raise ApiError(
            408,
            f"request body not received within {timeout:g} s",
            None,
            "body_timeout",
            {"Connection": "close"},
        ) from None
    return bytes(body)


async def read_json(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """A JSON object body, checked to be one (400 otherwise); returned raw for `parse_json`."""
    ctype = request.headers.get("content-type", "")
    if ctype and "json" not in ctype.lower():
        raise ApiError(415, f"expected a JSON body (Content-Type: application/json), got {ctype!r}", None)
    raw = await read_body(request, limit, timeout)
    if not raw.strip():
        raise ApiError(400, "empty request body: expected a JSON object", None, "invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise ApiError(400, f"request body is not valid JSON ({msg})", None, "invalid_json") from None
    except RecursionError:
        raise ApiError(
            400, "request body is not valid JSON (nested too deeply)", None, "invalid_json"
        ) from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ApiError(400, f"request body is not valid JSON ({exc})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", None, "invalid_json")
    return raw


async def read_form(request: Request, limit: int, timeout: float | None = None) -> FormData:
    """A multipart (or urlencoded) body, parsed in memory."""
    ctype = request.headers.get("content-type", "")
    raw = await read_body(request, limit, timeout)

    async def stream():  # noqa: ANN202
        yield raw
        yield b""

    try:
        if ctype.startswith("multipart/form-data"):
            parser = _InMemoryMultiPart(request.headers, stream(), max_files=MAX_FILES, max_fields=MAX_FIELDS)
            return await parser.parse()
        if ctype.startswith("application/x-www-form-urlencoded"):
            return await FormParser(request.headers, stream()).parse()
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body ({exc.message})", None, "invalid_form") from None
    raise ApiError(
        415, f"expected multipart/form-data, got {ctype or 'no Content-Type'}", None, "invalid_form"
    )


def text_fields(form: FormData, files: tuple[str, ...]) -> dict[str, str]:
    """The form's text fields (empty ones left out), for a request model; a file where text is
    expected, or text where a file is expected, is 422 naming the field."""
    out: dict[str, str] = {}
    for name, value in form.multi_items():
        if name in files:
            if not isinstance(value, UploadFile):
                raise ApiError(422, f"{name}: must be an uploaded audio file", name, "invalid_audio")
            continue
        if isinstance(value, UploadFile):
            raise ApiError(422, f"{name}: must be a text field, not a file", name, "invalid_value")
        if value.strip():
            out[name] = value.strip()
    return out


async def upload(form: FormData, name: str, max_seconds: float) -> AudioArray | None:
    """The audio of file field `name`, decoded in memory (None when absent); 413 when longer
    than `max_seconds`."""
    v = form.get(name)
    if v is None:
        return None
    if not isinstance(v, UploadFile):
        raise ApiError(422, f"{name}: must be an uploaded audio file", name, "invalid_audio")
    try:
        data = await v.read()
    finally:
        await v.close()
    try:
        audio = await asyncio.to_thread(media.decode_upload, data, name)
    except MetisError as exc:
        raise from_metis(exc, name) from None
    secs = media.seconds(audio)
    if secs > max_seconds:
        raise ApiError(
            413, f"{name}: {secs:.1f} s of audio (at most {max_seconds:g} s on this server)", name, "too_long"
        )
    return audio
