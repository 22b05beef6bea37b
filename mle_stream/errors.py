"""The exceptions mle-stream raises, as one tree.

    MleStreamError
    ├── InvalidEvent        a prediction, label or command that breaks the contract (names the field)
    ├── ConfigError         a topology file or setting that is wrong (names the file:line or variable)
    ├── BrokerError         the Kafka broker could not be started or reached
    └── ActuationError      the actuator could not apply a command
        └── RejectedCommand the command is unsigned, forged or malformed; nothing was changed

Every message says what was wrong, where, and what to do about it.
"""

from __future__ import annotations


class MleStreamError(Exception):
    """Base class of every error mle-stream raises on purpose."""


class InvalidEvent(MleStreamError):
    """An event breaks the public contract; `field` names the offending field ('' for the whole)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class ConfigError(MleStreamError):
    """A topology file or a setting is wrong."""


class BrokerError(MleStreamError):
    """The Kafka broker could not be started or reached."""


class ActuationError(MleStreamError):
    """The actuator could not apply a command. `transient`: it failed on errors that retries could
    not outlast this time (a service down or overloaded), so delivering the command again later may
    succeed; otherwise the command or the configuration has to change first."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RejectedCommand(ActuationError):
    """A command the actuator refuses to apply: unsigned, forged or malformed."""
