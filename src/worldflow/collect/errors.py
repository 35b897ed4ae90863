"""Errors the API answers with: an HTTP status and a JSON body ``{"code", "message"}``.

The message names the field or header and what is wrong, so a developer can fix the call
without reading server logs. Segment's client libraries read exactly these two keys.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, {"WWW-Authenticate": 'Basic realm="worldflow"'})
