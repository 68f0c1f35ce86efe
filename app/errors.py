"""Domain errors. Domain modules raise these; the web layer maps them to 4xx answers."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request that cannot be carried out, with a message a person can act on."""

    status_code = 400

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(DomainError):
    status_code = 404


class Forbidden(DomainError):
    status_code = 403


class Conflict(DomainError):
    status_code = 409


class Invalid(DomainError):
    status_code = 422
