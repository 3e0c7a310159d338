"""Client errors: every rejected request gets a 4xx with a JSON body naming the problem.

The body is `{"success": false, "code": ..., "message": ...}` (plus `index` for
the offending event of a batch and `field`; `rejected`, every invalid call's
error, when a whole batch was invalid); `code` and `message` are what the
Segment and RudderStack clients read from a failed response.
"""

from __future__ import annotations

import orjson


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        index: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.index = index
        self.headers = headers or {}
        self.rejected: list[ApiError] = []

    def detail(self) -> dict:
        payload: dict = {"code": self.code, "message": self.message}
        if self.field is not None:
            payload["field"] = self.field
        if self.index is not None:
            payload["index"] = self.index
        return payload

    def body(self) -> bytes:
        payload: dict = {"success": False, **self.detail()}
        if self.rejected:
            payload["rejected"] = [error.detail() for error in self.rejected]
        return orjson.dumps(payload)


def accepted_body(rejected: list[ApiError]) -> bytes:
    """200: stored, except the calls of a batch listed as rejected."""
    return orjson.dumps({"success": True, "rejected": [error.detail() for error in rejected]})


def bad_request(code: str, message: str, *, field: str | None = None, index: int | None = None) -> ApiError:
    if index is not None:
        message = f"batch[{index}]: {message}"
    return ApiError(400, code, message, field=field, index=index)


class StoreUnavailable(Exception):
    """The warehouse cannot take the events now: the client should retry (503)."""
