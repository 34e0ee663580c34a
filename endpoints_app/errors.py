"""Domain errors. Each carries the Databricks ``error_code`` and HTTP status it maps to.

Services raise these; the API's exception handler and the gateway turn them into
``{"error_code": ..., "message": ...}`` responses (reference §5.5). Messages must never contain
the phrases that make the Databricks SDK retry (e.g. "Unexpected error").
"""

from __future__ import annotations


class DomainError(Exception):
    error_code = "BAD_REQUEST"
    status = 400

    def __init__(self, message: str, *, error_code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if error_code is not None:
            self.error_code = error_code
        if status is not None:
            self.status = status

    def as_dict(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


class InvalidParameterValue(DomainError):
    error_code = "INVALID_PARAMETER_VALUE"
    status = 400


class MalformedRequest(DomainError):
    error_code = "MALFORMED_REQUEST"
    status = 400


class ResourceDoesNotExist(DomainError):
    error_code = "RESOURCE_DOES_NOT_EXIST"
    status = 404


class ResourceAlreadyExists(DomainError):
    error_code = "RESOURCE_ALREADY_EXISTS"
    status = 409


class ResourceConflict(DomainError):
    error_code = "RESOURCE_CONFLICT"
    status = 409


class Unauthenticated(DomainError):
    error_code = "UNAUTHENTICATED"
    status = 401


class PermissionDenied(DomainError):
    error_code = "PERMISSION_DENIED"
    status = 403


class TemporarilyUnavailable(DomainError):
    error_code = "TEMPORARILY_UNAVAILABLE"
    status = 503


class DeadlineExceeded(DomainError):
    error_code = "DEADLINE_EXCEEDED"
    status = 504


class PreconditionFailed(DomainError):
    """An If-Match named a version of the endpoint that is no longer current (a lost update)."""

    error_code = "PRECONDITION_FAILED"
    status = 412


class NotSupported(DomainError):
    """A Databricks API this server does not offer (provisioned throughput, UC connections): a clear
    400 naming what to use instead, rather than a 404 or 405 a client cannot make sense of."""

    error_code = "BAD_REQUEST"
    status = 400
