"""Engine errors: what went wrong, in terms a client can act on.

The engine never imports gRPC. It raises these; the service layer maps each class to exactly one
gRPC status code (see ``mvr.server.service``). Every message names the offending field and value, so
the text can be passed to the client unchanged.
"""

from __future__ import annotations

import time


class MvrError(Exception):
    """Base class of every error the engine reports to a caller."""


class InvalidArgument(MvrError):
    """The request itself is malformed: a field has a value that can never be valid.

    Maps to INVALID_ARGUMENT.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def document_index(error: MvrError) -> int | None:
    """The i of a 'documents[i]...' field in an engine error: the document of a batch it is about."""
    field = getattr(error, "field", "") or str(error)
    if field.startswith("documents["):
        try:
            return int(field[len("documents[") : field.index("]")])
        except ValueError:
            return None
    return None


class NotFound(MvrError):
    """A named resource (collection, document) does not exist. Maps to NOT_FOUND."""


class AlreadyExists(MvrError):
    """A resource with that name exists already. Maps to ALREADY_EXISTS."""


class FailedPrecondition(MvrError):
    """The request is well formed but does not fit the state of the system.

    Examples: vectors whose dim differs from the collection's, text sent to a collection without an
    encoder, a collection written by another model. Maps to FAILED_PRECONDITION.
    """


class ResourceExhausted(MvrError):
    """A size or capacity limit was hit (batch too large, message too large, a queue full). Maps to
    RESOURCE_EXHAUSTED; ``retry_after_s`` set means the condition is transient (a queue draining) and
    travels as a google.rpc.RetryInfo detail."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(MvrError):
    """The server cannot take the call right now (starting, shutting down). Maps to UNAVAILABLE."""


class DeadlineExceeded(MvrError):
    """The caller's deadline passed before the work was done; the work was stopped there, so that no
    result is computed for a caller that has gone. Maps to DEADLINE_EXCEEDED."""


def check_deadline(deadline: float | None, before: str) -> None:
    """Raises DeadlineExceeded if ``deadline`` (a ``time.monotonic()`` instant; None: none) has passed;
    ``before`` names the step that would have come next."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"the call's deadline passed before {before}; the work was stopped")
