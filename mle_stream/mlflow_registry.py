"""A ModelRegistry backed by the MLflow Model Registry, using aliases (not the deprecated stages).

The one module that reaches the MLflow registry: the actuator moves aliases and tags through it,
the worker side resolves a topology's aliases through it at start (mle_stream.aliases). It sits
outside the actuator package so neither side imports the other; importing mlflow is slow, so the
rest of the actuator and the pure core stay free of it.

MLflow returns version numbers as integers in some places (3.x: `ModelVersion.version`,
`RegisteredModel.aliases` values); the port speaks strings, so everything is converted here.

Transient failures are retried here, per registry call, with bounded exponential backoff: the
server unreachable (connection refused or reset), a request timing out, HTTP 429 and 5xx. What
MLflow raises for each (3.x, with its own HTTP retries off, see `_MLFLOW_HTTP_DEFAULTS`):

- connection refused / reset, read timeout: MlflowException(INTERNAL_ERROR, "API request to ...
  failed with exception ...") whose __context__ (not __cause__) is a requests ConnectionError;
- 429, 500, 502, 503, 504 (MLflow's retry codes, and 408): the same, with a requests RetryError
  ("too many 503 error responses");
- another status with an MLflow JSON body: RestException with the server's error code
  (RESOURCE_DOES_NOT_EXIST 404, INVALID_PARAMETER_VALUE 400, INTERNAL_ERROR 500, ...);
- another status without one: MlflowException with the code mapped from the status (501
  NOT_IMPLEMENTED, 404 ENDPOINT_NOT_FOUND).

`is_transient` draws that line; unknown models or versions and invalid parameters fail at once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from mle_stream.errors import ActuationError, ConfigError
from mle_stream.redact import redact_text, redact_uri
from mle_stream.retry import Backoff, RetriesExhausted, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"

# Error codes an MLflow server answers with when it is overloaded or briefly unwell, not when the
# request is wrong. INTERNAL_ERROR counts only when a server sent it (a RestException): MLflow also
# uses it as the default code of any local failure, which retrying does not fix.
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
                              "DEADLINE_EXCEEDED"})

# MLflow's HTTP client retries inside every call: MLFLOW_HTTP_REQUEST_MAX_RETRIES (default 7) with
# MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (default 2; urllib3 sleeps 0, 4, 8, ... 64, 120 s: ~4 min on
# a dead server) and up to MLFLOW_HTTP_REQUEST_TIMEOUT (default 120 s) per attempt, so one call
# can block the actuator for many minutes and then fail with a message that hides how often it
# tried. Those settings exist only process-wide, in the environment. So MlflowRegistry retries
# itself (bounded, transient errors only, see `is_transient`) and, for an HTTP tracking URI, turns
# MLflow's retries off and its timeout down for the process, unless the operator set them (then
# the operator's values stand, and the two retry layers multiply). 5 s per request is ample for
# these small metadata calls and keeps a hung server's worst case, (9 attempts x 5 s + 63.5 s of
# backoff) per call, times two calls when a command fails (the failing call, then the read-back
# of the aliases for the event), under librdkafka's max.poll.interval.ms of 300 s.
_MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first."""
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in links:
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same registry call again may succeed: the server unreachable, slow or
    overloaded (connection errors, timeouts, HTTP 429 and 5xx), not a wrong request."""
    if isinstance(exc, RestException):  # the server answered: its error code says
        return exc.error_code in _TRANSIENT_CODES or exc.error_code == "INTERNAL_ERROR"
    for link in _chain(exc):
        if isinstance(link, requests.exceptions.SSLError):
            return False  # a certificate problem does not go away by itself
        if isinstance(link, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             requests.exceptions.RetryError, ConnectionError, TimeoutError)):
            return True
    return isinstance(exc, MlflowException) and exc.error_code in _TRANSIENT_CODES


def _describe(exc: BaseException) -> str:
    """MLflow's message, or for a network failure its root cause (MLflow's text repeats the URL)."""
    links = _chain(exc)
    if len(links) > 1 and is_transient(exc):
        root = links[-1]
        return f"{type(root).__name__}: {root}"
    return exc.message if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {exc}"


# MLflow's database stores (mlflow.store.db). mlflow-skinny, which mle-stream[worker] and [actuator]
# install, talks to a tracking server only: these need the full mlflow package (SQLAlchemy, Alembic).
_DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})


def _check_store_support(uri: str) -> None:
    """ConfigError when `uri` is a database store and this install cannot open one: MLflow would
    only say "unsupported URI" at the first registry call."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in _DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        raise ConfigError(f"the MLflow store {redact_uri(uri)} is a database, which only the full mlflow package "
                          "can open (this install has mlflow-skinny, a tracking-server client): set "
                          "MLFLOW_TRACKING_URI to an MLflow server (http://...), or pip install 'mle-stream[embedded]'")


class MlflowRegistry:
    """ModelRegistry on an MLflow tracking/registry server or a local `sqlite:///` store.

    registry_uri defaults to tracking_uri, as in MLflow itself. Every registry call is retried on
    transient errors (see the module docstring): `attempts` tries in all, waiting `base_delay_s`,
    then twice as long each time up to `max_delay_s`. The defaults (9 attempts, 0.5 s to 16 s,
    63.5 s of waiting) ride out an MLflow restart of half a minute. Every failure is raised as
    ActuationError naming the registry, the model and the version, with MLflow's exception chained;
    after retries it says how many attempts failed and the last cause. `sleep` is for tests.

    Retrying a write whose answer was lost is safe: every write here is idempotent (an alias set
    to the same version, a tag set to the same value, an alias already deleted).
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None = None,
        *,
        attempts: int = 9,
        base_delay_s: float = 0.5,
        max_delay_s: float = 16.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not tracking_uri:
            raise ValueError("tracking_uri is empty: set MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db)")
        self.backoff = Backoff(attempts, base_delay_s, max_delay_s)
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._sleep = sleep
        if any(uri.startswith(("http://", "https://")) for uri in (self.tracking_uri, self.registry_uri)):
            for name, value in _MLFLOW_HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
        for uri in {self.tracking_uri, self.registry_uri}:
            _check_store_support(uri)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def aliases(self, model: str) -> dict[str, str]:
        registered = self._call(f"read aliases of model {model!r}", lambda: self._client.get_registered_model(model))
        return {alias: str(version) for alias, version in (registered.aliases or {}).items()}

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._call(
            f"point alias {alias!r} of model {model!r} at version {version!r}",
            lambda: self._client.set_registered_model_alias(model, alias, version),
        )

    def delete_alias(self, model: str, alias: str) -> None:
        # Checked first because the port promises a no-op for a missing alias, and MLflow's REST
        # stores have answered that case with RESOURCE_DOES_NOT_EXIST (3.x servers answer 200).
        if alias not in self.aliases(model):
            return

        def delete() -> None:
            try:
                self._client.delete_registered_model_alias(model, alias)
            except MlflowException as exc:
                # Deleted concurrently, or by an earlier attempt whose answer was lost: the outcome we wanted.
                if exc.error_code != _NOT_FOUND:
                    raise

        self._call(f"delete alias {alias!r} of model {model!r}", delete)

    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None:
        def setter(key: str, value: str) -> Callable[[], None]:
            return lambda: self._client.set_model_version_tag(model, version, key, value)

        for key, value in tags.items():  # one call per tag: MLflow has no batch update for versions
            self._call(f"set tag {key!r} on model {model!r} version {version!r}", setter(key, value))

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        found = self._call(
            f"read tags of model {model!r} version {version!r}", lambda: self._client.get_model_version(model, version)
        )
        return dict(found.tags or {})

    def tag_model(self, model: str, tags: dict[str, str]) -> None:
        def setter(key: str, value: str) -> Callable[[], None]:
            return lambda: self._client.set_registered_model_tag(model, key, value)

        for key, value in tags.items():
            self._call(f"set tag {key!r} on model {model!r}", setter(key, value))

    def model_tags(self, model: str) -> dict[str, str]:
        found = self._call(f"read tags of model {model!r}", lambda: self._client.get_registered_model(model))
        return dict(found.tags or {})

    def _describe(self, exc: BaseException) -> str:
        # MLflow's messages repeat the URI they were given, credentials and all.
        return redact_text(_describe(exc), self.tracking_uri, self.registry_uri)

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one registry call, again after transient failures; ActuationError naming `what` otherwise."""
        def transient(exc: Exception) -> str | None:
            if not isinstance(exc, (MlflowException, requests.exceptions.RequestException)):
                return None
            if not is_transient(exc):
                raise ActuationError(f"MLflow registry {redact_uri(self.registry_uri)}: could not {what}: "
                                     f"{self._describe(exc)}") from exc
            return self._describe(exc)

        def on_retry(attempt: int, why: str, delay: float) -> None:
            log.warning("MLflow registry %s: could not %s (attempt %d of %d: %s); retrying in %.1f s",
                        redact_uri(self.registry_uri), what, attempt, self.backoff.attempts, why, delay)

        try:
            return retrying(action, self.backoff, transient, on_retry, self._sleep)
        except RetriesExhausted as exc:
            raise ActuationError(
                f"MLflow registry {redact_uri(self.registry_uri)}: could not {what}: {exc.attempts} attempts failed "
                f"over {exc.elapsed_s:.1f} s (MLflow unreachable, timing out or overloaded); last error: {exc.last}",
                transient=True,
            ) from exc.__cause__


def register_demo_versions(tracking_uri: str, model: str, n_versions: int, artifact_dir: Path) -> list[str]:
    """Register `n_versions` new versions of `model`, each from its own run; returns their numbers.

    For the demo and tests, where no training exists yet. Versions are created from a run's
    artifacts (a tiny MLmodel file under `model/`) because an MLflow server refuses a version
    whose source is a local path outside its run's artifact directory. The experiment
    "mle-stream-demo" stores artifacts under `artifact_dir`, so nothing is written to the cwd.
    The client is used directly (no `mlflow.start_run`) so the caller's global MLflow state (active
    run, tracking URI) is left alone.
    """
    if n_versions < 1:
        raise ValueError(f"n_versions must be >= 1, got {n_versions}")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    where = f"MLflow at {redact_uri(tracking_uri)}"
    try:
        experiment = client.get_experiment_by_name("mle-stream-demo")
        if experiment is None:
            location = Path(artifact_dir).resolve()
            location.mkdir(parents=True, exist_ok=True)
            experiment_id = client.create_experiment("mle-stream-demo", artifact_location=location.as_uri())
        else:
            experiment_id = experiment.experiment_id
        try:
            client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code != _NOT_FOUND:
                raise
            client.create_registered_model(model, description="registered by mle-stream's demo")
        versions: list[str] = []
        for _ in range(n_versions):
            run = client.create_run(experiment_id, tags={"mle.demo_model": model})
            client.log_text(
                run.info.run_id, f"artifact_path: model\nflavors: {{}}\n# demo version of {model}\n", "model/MLmodel"
            )
            client.set_terminated(run.info.run_id)
            created = client.create_model_version(
                model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
            )
            versions.append(str(created.version))
    except MlflowException as exc:
        raise ActuationError(f"{where}: could not register demo versions of model {model!r}: "
                             f"{redact_text(exc.message, tracking_uri)}") from exc
    log.info("registered versions %s of %s in %s", versions, model, redact_uri(tracking_uri))
    return versions
