"""Streamed answers: `stream_format: "audio"` (the encoded audio over chunked transfer, as it is
made) and `stream_format: "sse"` (server-sent events `speech.audio.delta` with base64 audio, then
`speech.audio.done` with the usage).

A TTS text is queued piece by piece (`Pipeline.stream_jobs`: the first sentence alone, then
pieces of at most --max-chars), so the first piece is answered as soon as it is made and the
pieces of concurrent streams share padded batches; the next piece is queued when the previous
one is done, behind whatever arrived meanwhile (round robin). Other tasks run as one stepped
work (`Batcher.stream`: a long input chunk by chunk, taking turns with the other requests).
The first block is awaited before the response starts, so a request that fails at once gets its
proper status; a failure after that ends the stream (sse: an `error` event). A client that
leaves stops the rest of its work: no further piece is queued and the running one stops at its
next decoding step when no other request shares its batch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from metis_cli.constants import CODEC_SAMPLE_RATE
from metis_cli.errors import InputError
from metis_cli.media.stream_encode import STREAMABLE, stream_encoder
from metis_cli.serve.batcher import BatchFailed, ClientGone, DeadlineExceeded, NotReady, QueueFull
from metis_cli.serve.errors import ApiError, from_job_error

log = logging.getLogger("metis.serve")

STREAM_FORMATS = ("audio", "sse")


class _JobFailed(Exception):
    """A streamed piece's job failed (its JobResult's error)."""

    def __init__(self, res: Any) -> None:
        super().__init__(res.error)
        self.res = res


def check_stream_format(stream_format: str | None, fmt: str) -> None:
    """422 naming the field when a streamed response cannot carry `fmt`."""
    if stream_format is not None and stream_format not in STREAM_FORMATS:
        raise ApiError(
            422, f"stream_format: must be one of {', '.join(STREAM_FORMATS)} (got {stream_format!r})",
            "stream_format", "invalid_value",
        )  # fmt: skip
    if stream_format is not None and fmt not in STREAMABLE:
        raise ApiError(
            422, f"response_format: {fmt!r} cannot be streamed (streamable: {', '.join(STREAMABLE)})",
            "response_format", "invalid_value",
        )  # fmt: skip


def _api_error(exc: BaseException, service: Any, task: str) -> ApiError | None:
    """The HTTP error of a failure before the first byte (None: the client left)."""
    if isinstance(exc, QueueFull):
        msg = f"the {task} queue is full; retry later"
        return ApiError(429, msg, None, "queue_full", {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, f"not finished within {service.config.request_timeout:g} s", None, "timeout")
    if isinstance(exc, NotReady):
        return ApiError(503, str(exc), None, "not_ready")
    if isinstance(exc, BatchFailed):
        return ApiError(500, str(exc), None, "generation_failed")
    if isinstance(exc, _JobFailed):
        return from_job_error(exc.res.error, exc.res.error_type)
    return None


async def _tts_blocks(
    service: Any, request: Request, job: Any, decoding: Any, deadline: float, rid: str, info: dict
) -> AsyncIterator[np.ndarray]:
    """A TTS job's pieces, each queued when the previous one is done, faded at the joins."""
    pipe, batcher = service.pipelines["tts"], service.batcher("tts")
    pieces = pipe.stream_jobs(job)
    info["chunks"] = len(pieces)
    for i, piece in enumerate(pieces):
        res, _ = await batcher.submit(piece, decoding, deadline, rid, request.is_disconnected)
        if res.audio_seconds:
            info["audio_seconds"] = res.audio_seconds
        if not res.ok:
            raise _JobFailed(res)
        yield pipe.stream_piece(res.wav, i, len(pieces))


async def _task_blocks(
    service: Any, request: Request, task: str, job: Any, decoding: Any, deadline: float, rid: str, info: dict
) -> AsyncIterator[np.ndarray]:
    """Another task's job as one stepped work: a long input chunk by chunk, else one block."""
    pipe, batcher = service.pipelines[task], service.batcher(task)

    def blocks(cancelled: Callable[[], bool]) -> Any:
        return pipe.stream_blocks(job, decoding, cancelled, info)

    try:
        async for block in batcher.stream(job, decoding, deadline, rid, blocks, request.is_disconnected):
            yield block
    except (ClientGone, DeadlineExceeded, NotReady, QueueFull, BatchFailed):
        raise
    except Exception as exc:  # noqa: BLE001 - the job's own failure: reported like an unstreamed one
        res = pipe.failure(job, exc)
        if res is None:
            raise BatchFailed(str(exc).strip().splitlines()[0] if str(exc).strip() else "") from None
        raise _JobFailed(res) from None


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def stream_answer(
    service: Any,
    request: Request,
    task: str,
    job: Any,
    decoding: Any,
    fmt: str,
    stream_format: str,
) -> Response:
    """Answer a generation request with a streamed body (`stream_format` "audio" or "sse")."""
    check_stream_format(stream_format, fmt)
    try:
        encoder = stream_encoder(fmt)
    except InputError as exc:
        raise ApiError(422, str(exc), "response_format", "invalid_value") from None
    rid = request.scope.get("state", {}).get("request_id", "?")
    deadline = time.monotonic() + service.config.request_timeout
    info: dict[str, Any] = {}
    if task == "tts":
        blocks = _tts_blocks(service, request, job, decoding, deadline, rid, info)
    else:
        blocks = _task_blocks(service, request, task, job, decoding, deadline, rid, info)
    t0 = time.perf_counter()
    first = await _first_block(service, task, blocks)
    if first is None:
        return Response(status_code=499)
    first_seconds = time.perf_counter() - t0
    service.metrics.first_audio.labels(task).observe(first_seconds)
    body = _Body(service, task, rid, stream_format, encoder, blocks, info, len(job.text or ""))
    headers = {
        "X-Metis-Seed": str(job.seed),
        "X-Metis-Steps": str(decoding.steps),
        "X-Metis-Model": service.pipelines[task].model_name,
        "X-Metis-First-Audio-Seconds": f"{first_seconds:.3f}",
        "Cache-Control": "no-store",
    }
    if info.get("chunks"):
        headers["X-Metis-Chunks"] = str(info["chunks"])
    media_type = "text/event-stream" if stream_format == "sse" else encoder.media_type
    return StreamingResponse(body.chunks(first), media_type=media_type, headers=headers)


async def _first_block(service: Any, task: str, blocks: AsyncIterator[np.ndarray]) -> np.ndarray | None:
    """The first block, before the status line is sent: a failure is its HTTP error; None: the
    client left."""
    m = service.metrics
    try:
        return await blocks.__anext__()
    except StopAsyncIteration:
        return np.zeros(0, np.float32)
    except BaseException as exc:
        await blocks.aclose()
        err = _api_error(exc, service, task)
        if err is None:
            if isinstance(exc, ClientGone | asyncio.CancelledError):
                m.streams.labels(task, "disconnected").inc()
                if isinstance(exc, ClientGone):
                    return None
            raise
        m.streams.labels(task, "error").inc()
        if isinstance(exc, _JobFailed):
            m.jobs.labels(task, "error").inc()
        raise err from None


class _Body:
    """The bytes of a streamed answer: encoded blocks (sse: as delta events), then the end."""

    def __init__(
        self,
        service: Any,
        task: str,
        rid: str,
        stream_format: str,
        encoder: Any,
        blocks: AsyncIterator[np.ndarray],
        info: dict[str, Any],
        chars: int,
    ) -> None:
        self.service, self.task, self.rid, self.stream_format = service, task, rid, stream_format
        self.encoder, self.blocks, self.info, self.chars = encoder, blocks, info, chars
        self.samples = 0

    async def chunks(self, first: np.ndarray) -> AsyncIterator[bytes]:
        m, task, outcome = self.service.metrics, self.task, "error"
        try:
            block: np.ndarray | None = first
            while block is not None:
                self.samples += int(block.shape[0])
                data = await asyncio.to_thread(self.encoder.feed, block)
                if data:
                    yield _delta(data, self.stream_format)
                block = await anext(self.blocks, None)
            tail = await asyncio.to_thread(self.encoder.finish)
            if tail:
                yield _delta(tail, self.stream_format)
            if self.stream_format == "sse":
                yield _sse({"type": "speech.audio.done", "usage": self.usage()})
            outcome = "ok"
            m.jobs.labels(task, "ok").inc()
            m.audio_out.labels(task).inc(self.samples / CODEC_SAMPLE_RATE)
            if self.info.get("audio_seconds") and task != "tts":
                m.audio_in.labels(task).inc(float(self.info["audio_seconds"]))
        except ClientGone:  # noticed by the batcher's poll: nobody is left to tell
            outcome = "disconnected"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "disconnected"
            raise
        except Exception as exc:  # noqa: BLE001 - the status line is sent: end the stream, say why
            err = _api_error(exc, self.service, task)
            message = err.message if err is not None else "internal error"
            log.error("%s: stream failed after %d samples: %s", self.rid, self.samples, message)
            if self.stream_format != "sse":
                raise
            code = err.code if err is not None else "internal_error"
            yield _sse({"type": "error", "error": {"message": message, "code": code}})
        finally:
            await self.blocks.aclose()
            m.streams.labels(task, outcome).inc()
            seconds = self.samples / CODEC_SAMPLE_RATE
            log.info("%s: stream %s after %.3f s of audio", self.rid, outcome, seconds)
            if self.service.on_stream_end is not None:
                self.service.on_stream_end(self.rid, outcome)

    def usage(self) -> dict[str, Any]:
        """The `speech.audio.done` usage: input characters (TTS), output seconds (and input seconds)."""
        usage: dict[str, Any] = {
            "input_characters": self.chars,
            "output_seconds": round(self.samples / CODEC_SAMPLE_RATE, 3),
        }
        if self.info.get("audio_seconds") and self.task != "tts":
            usage["input_seconds"] = round(float(self.info["audio_seconds"]), 3)
        return usage


def _delta(data: bytes, stream_format: str) -> bytes:
    if stream_format == "sse":
        return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
    return data
