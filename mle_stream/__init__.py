"""mle-stream: Kafka-native evaluation of ML models in production, with automatic rollback."""

from mle_stream.core.events import (
    Command,
    CommandKind,
    Label,
    MetricSnapshot,
    Prediction,
    RolloutEvent,
    RolloutStatus,
)
from mle_stream.errors import (
    ActuationError,
    BrokerError,
    ConfigError,
    InvalidEvent,
    MleStreamError,
    RejectedCommand,
)

__version__ = "0.1.0"

__all__ = [
    "ActuationError",
    "BrokerError",
    "Command",
    "CommandKind",
    "ConfigError",
    "InvalidEvent",
    "Label",
    "MetricSnapshot",
    "MleStreamError",
    "Prediction",
    "RejectedCommand",
    "RolloutEvent",
    "RolloutStatus",
    "__version__",
]
