"""The verifier everything people see is filtered through: the status page, `mle-stream status`,
the webhook notifier.

Those components never check a signature themselves: they take a `Verifier`, a function that says
whether a command comes from a signer this deployment trusts, and drop (and count) the rest. The
entry points (the CLI's worker, status and actuator commands) build it once with `verifier_for`,
so a change of signing scheme changes this module and nothing that shows commands.
"""

from __future__ import annotations

from collections.abc import Callable

from mle_stream.config import Settings
from mle_stream.core import signing
from mle_stream.core.events import Command
from mle_stream.keys import HMAC_KEY_ID, verifier_from_settings

Verifier = Callable[[Command], bool]


def never_raising(check: Verifier) -> Verifier:
    """`check`, except that a command it cannot even examine counts as unverified instead of raising:
    a forged command may hold anything (a non-ASCII signature, a lone surrogate in a name), and a
    reader that crashes on it is a reader an attacker can stop."""

    def verified(command: Command) -> bool:
        try:
            return check(command) is True
        except Exception:  # noqa: BLE001 - whatever it is, the command is not verified
            return False

    return verified


def trusting(keys: signing.Verifier) -> Verifier:
    """Commands signed by any of `keys` (core/signing.py); never raises."""
    return never_raising(lambda command: keys.verify(command) is not None)


def hmac_verifier(key: bytes) -> Verifier:
    """Commands signed with the shared HMAC `key` under its default key id (MLE_SIGNING_KEY); never raises."""
    if not key:
        raise ValueError("the signing key is empty: nothing could be verified (set MLE_SIGNING_KEY)")
    return trusting(signing.Verifier({HMAC_KEY_ID: key}))


def verifier_for(settings: Settings) -> Verifier:
    """The deployment's verifier: the one place the CLI builds it from (see the module docstring).
    ConfigError when the settings name no key to verify with (mle_stream/keys.py)."""
    return trusting(verifier_from_settings(settings))
