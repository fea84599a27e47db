"""Errors as HTTP answers in the OpenAI error shape: {"error": {message, type, param, code}}.

Messages are the job layer's one-line messages (the CLI's wording), with a flag such as
`--steps` named by its request field (`steps`).
"""

from __future__ import annotations

from typing import Any

from metis_cli.errors import AudioError, InputError, MetisError, OutputError, UsageError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}


class ApiError(Exception):
    """An error answer: status, one-line message, the request field it is about."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def one_line(text: str) -> str:
    text = str(text).strip()
    return text.splitlines()[0] if text else "error"


def field_message(exc: BaseException, param: str) -> str:
    """A UsageError's message with its flag named by the request field: '--steps: ...' → 'steps: ...'."""
    msg = one_line(str(exc))
    flag = "--" + param.replace("_", "-")
    if msg.startswith(flag + ":"):
        return param + msg[len(flag) :]
    return msg


def from_metis(exc: MetisError, param: str | None = None) -> ApiError:
    """The answer for a job-layer error: bad values and inputs 422, the server's own failures 500."""
    if isinstance(exc, UsageError):
        return ApiError(422, field_message(exc, param) if param else str(exc), param, "invalid_value")
    if isinstance(exc, AudioError):
        return ApiError(422, str(exc), param, "invalid_audio")
    if isinstance(exc, InputError):
        return ApiError(422, str(exc), param, "invalid_input")
    if isinstance(exc, OutputError):
        return ApiError(500, str(exc), None, "output_error")
    return ApiError(500, str(exc), None, "generation_failed")


def from_job_error(message: str, error_type: type[BaseException] | None) -> ApiError:
    """The answer for a job that failed in the engine (its one-line message)."""
    if error_type is not None and issubclass(error_type, (InputError, AudioError)):
        code = "invalid_audio" if issubclass(error_type, AudioError) else "invalid_input"
        return ApiError(422, message, None, code)
    return ApiError(500, message, None, "generation_failed")
