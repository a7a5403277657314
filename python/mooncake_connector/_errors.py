"""Exceptions. ``from_status`` is the one place where a C++ status code becomes
a Python exception; every class also derives from the matching builtin, so
``except KeyError`` and ``except MooncakeConnectorError`` both work."""

from __future__ import annotations


class MooncakeConnectorError(Exception):
    """Base class of every error this package raises."""

    code = "Unknown"


class NotFoundError(MooncakeConnectorError, KeyError):
    code = "NotFound"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(MooncakeConnectorError, ValueError):
    code = "InvalidArgument"


class UnavailableError(MooncakeConnectorError, ConnectionError):
    code = "Unavailable"


class DeadlineExceededError(MooncakeConnectorError, TimeoutError):
    code = "DeadlineExceeded"


class AlreadyExistsError(MooncakeConnectorError, FileExistsError):
    code = "AlreadyExists"


class DataLossError(MooncakeConnectorError, ValueError):
    """Stored bytes are corrupt, truncated or not of the expected kind."""

    code = "DataLoss"


class ResourceExhaustedError(MooncakeConnectorError, MemoryError):
    code = "ResourceExhausted"


class InternalError(MooncakeConnectorError, RuntimeError):
    code = "Internal"


class UnimplementedError(MooncakeConnectorError, NotImplementedError):
    code = "Unimplemented"


class FailedPreconditionError(MooncakeConnectorError, RuntimeError):
    code = "FailedPrecondition"


class AbortedError(MooncakeConnectorError, RuntimeError):
    code = "Aborted"


# Index = the C++ StatusCode value (include/mooncake_connector/status.h).
_BY_CODE: list[type[MooncakeConnectorError] | None] = [
    None,  # kOk
    NotFoundError,
    InvalidArgumentError,
    UnavailableError,
    DeadlineExceededError,
    AlreadyExistsError,
    DataLossError,
    ResourceExhaustedError,
    InternalError,
    UnimplementedError,
    FailedPreconditionError,
    AbortedError,
]


def from_status(code: int, message: str) -> MooncakeConnectorError:
    """The exception for a non-OK C++ status."""
    cls = _BY_CODE[code] if 0 < code < len(_BY_CODE) else None
    if cls is None:
        return InternalError(f"unknown status code {code}: {message}")
    return cls(message)
