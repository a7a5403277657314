"""Keep LLM weights and small data in a Mooncake Store (or the embedded
``memory://`` store) and load them back fast. The logic lives in the C++
library; this package binds it and adapts torch/numpy."""

from ._errors import (
    AbortedError,
    AlreadyExistsError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    MooncakeConnectorError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)
from .connector import MooncakeConnector, OwnSegmentWarning, create_remote_connector, supported_schemes

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "MooncakeConnector",
    "MooncakeConnectorError",
    "NotFoundError",
    "OwnSegmentWarning",
    "ResourceExhaustedError",
    "UnavailableError",
    "UnimplementedError",
    "create_remote_connector",
    "supported_schemes",
]
