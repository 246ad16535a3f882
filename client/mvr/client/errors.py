"""Exceptions raised by the mvr client: one class per gRPC status code the server uses.

Every error carries the status ``code`` (a :class:`grpc.StatusCode`), the server's ``message`` (which
names the offending field and value) and, for INVALID_ARGUMENT, ``field_violations``: the
``(field, description)`` pairs of the google.rpc.BadRequest detail. The original ``grpc.RpcError`` is
chained as ``__cause__``.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as reported by the server."""

    field: str
    description: str


class MvrError(Exception):
    """Base class of every error the client raises for a failed call."""

    def __init__(
        self, code: grpc.StatusCode, message: str, field_violations: tuple[FieldViolation, ...] = ()
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations
        # set when the server says the failure is transient and when to try again (google.rpc.RetryInfo),
        # e.g. RESOURCE_EXHAUSTED from a full indexing backlog or query queue
        self.retry_after_s: float | None = None


class InvalidArgumentError(MvrError):
    """The request is malformed (INVALID_ARGUMENT); ``field_violations`` names the fields."""


class NotFoundError(MvrError):
    """The collection or document does not exist (NOT_FOUND)."""


class AlreadyExistsError(MvrError):
    """A collection with that name exists (ALREADY_EXISTS)."""


class FailedPreconditionError(MvrError):
    """The request does not fit the collection, e.g. a dim or model mismatch (FAILED_PRECONDITION)."""


class ResourceExhaustedError(MvrError):
    """A batch or message exceeded a server limit, or the server is overloaded (RESOURCE_EXHAUSTED);
    ``retry_after_s`` is set when it is a queue that will drain (wait that long and try again)."""


class UnavailableError(MvrError):
    """The server is unreachable, loading or shutting down, after retries (UNAVAILABLE)."""


class DeadlineExceededError(MvrError):
    """The call's deadline passed (DEADLINE_EXCEEDED)."""


class UnauthenticatedError(MvrError):
    """The server wants an API key and got none or an unknown one (UNAUTHENTICATED)."""


class PermissionDeniedError(MvrError):
    """The API key's role does not cover this call (PERMISSION_DENIED)."""


_BY_CODE: dict[grpc.StatusCode, type[MvrError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def _status_details(error: grpc.RpcError) -> list:
    """The google.rpc.Status details of a failed call (empty when there are none or they are malformed)."""
    if not hasattr(error, "trailing_metadata"):
        return []
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # malformed status details: keep the plain message
        return []
    return [] if status is None else list(status.details)


def _violations(details: list) -> tuple[FieldViolation, ...]:
    found = []
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return tuple(found)


def _retry_after_s(details: list) -> float | None:
    for detail in details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return retry.retry_delay.ToNanoseconds() / 1e9
    return None


def from_rpc_error(error: grpc.RpcError) -> MvrError:
    """The MvrError subclass for a failed call (sync or asyncio)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    details = (
        _status_details(error)
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        else []
    )
    failure = _BY_CODE.get(code, MvrError)(code, message or "", _violations(details))
    failure.retry_after_s = _retry_after_s(details)
    return failure
