"""Reference profiles at the edge: read training rows from files, store profiles in MLflow.

The profile itself is pure (`mle_stream.core.drift.profile`); this module reads the data
(`read_columns`: .csv, .jsonl / .ndjson, .parquet), writes and reads profile files, and keeps a
profile next to its model version in MLflow (`log_to_mlflow`, `load_from_mlflow`).

In MLflow a profile is an artifact of the run the version was registered from, at
`mle-stream/reference_profile/<model>/v<version>.json` (model and version in the path: a run can be
the source of several versions), and the version carries the tag `mle_stream.reference_profile`
with the artifact's `runs:/<run_id>/<path>` URI. The worker finds a version's profile through the
tag. mlflow is imported only by those two functions (a ~2 s import).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mle_stream.config import missing_sqlite_store
from mle_stream.core.drift.profile import ReferenceProfile, build_profile
from mle_stream.core.topology import Topology
from mle_stream.errors import MleStreamError
from mle_stream.redact import redact_text, redact_uri

log = logging.getLogger(__name__)

PROFILE_TAG = "mle_stream.reference_profile"
ARTIFACT_DIR = "mle-stream/reference_profile"

Columns = dict[str, np.ndarray[Any, Any]]


class ProfileError(MleStreamError):
    """Reference data or a profile that cannot be read, built or stored (names the file and line)."""


# --- reading reference data ------------------------------------------------------------------

def read_columns(path: str | Path, exclude: Iterable[str] = ()) -> Columns:
    """The columns of a data file, name -> one value per row.

    - .csv: a header row, then one row per record. A column whose non-empty values all parse as
      numbers becomes a float array (empty -> NaN); any other column keeps its text (empty -> None).
      Only the empty field counts as missing ("NA" is a category).
    - .jsonl / .ndjson: one JSON object per line; the columns are the union of the keys, a key
      absent from a line is missing there. Values: numbers, strings, booleans or null.
    - .parquet / .pq (pyarrow): numeric columns as floats (null -> NaN), strings and booleans as
      values (null -> None). Columns of other types (timestamps, lists, ...) must be excluded;
      `exclude` columns are not converted (they come back as all-missing placeholders).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.is_file():
        raise ProfileError(f"{p}: no such file")
    if suffix == ".csv":
        return _read_csv(p)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(p)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(p, set(exclude))
    raise ProfileError(f"{p}: unknown data format {suffix or '(no extension)'!r}; expected .csv, .jsonl or .parquet")


def _read_csv(path: Path) -> Columns:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next((row for row in reader if row), None)
            if header is None:
                raise ProfileError(f"{path}: empty file (expected a header row and data rows)")
            header_line = reader.line_num
            _check_header(path, header_line, header)
            values: list[list[str]] = [[] for _ in header]
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise ProfileError(f"{path}:{reader.line_num}: row has {len(row)} fields, the header "
                                       f"(line {header_line}) has {len(header)}")
                for column, value in zip(values, row):
                    column.append(value)
        except csv.Error as exc:
            raise ProfileError(f"{path}:{reader.line_num}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ProfileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not values[0]:
        raise ProfileError(f"{path}: no data rows after the header (line {header_line})")
    return {name: _parse_csv_column(column) for name, column in zip(header, values)}


def _check_header(path: Path, line: int, header: list[str]) -> None:
    for i, name in enumerate(header, start=1):
        if not name.strip():
            raise ProfileError(f"{path}:{line}: column {i} of the header has no name")
    seen: set[str] = set()
    for i, name in enumerate(header, start=1):
        if name in seen:
            raise ProfileError(f"{path}:{line}: column {i}: duplicate column name {name!r}")
        seen.add(name)


def _parse_csv_column(values: list[str]) -> np.ndarray[Any, Any]:
    text = np.asarray(values, dtype=object)
    empty = text == ""
    if not empty.all():
        try:
            return np.where(empty, "nan", text).astype(np.float64)
        except ValueError:
            pass
    text[empty] = None
    return text


def _read_jsonl(path: Path) -> Columns:
    columns: dict[str, list[Any]] = {}
    rows = 0
    try:
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ProfileError(f"{path}:{line_number}:{exc.colno}: not JSON: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise ProfileError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
                for name, value in record.items():
                    if isinstance(value, (dict, list)):
                        raise ProfileError(f"{path}:{line_number}: column {name!r} holds a {type(value).__name__}; "
                                           "a profile takes numbers, strings, booleans or null")
                    column = columns.get(name)
                    if column is None:
                        column = columns[name] = [None] * rows
                    column.append(value)
                rows += 1
                for column in columns.values():
                    if len(column) < rows:
                        column.append(None)
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if rows == 0:
        raise ProfileError(f"{path}: empty file (expected one JSON object per line)")
    return {name: _typed(np.asarray(values, dtype=object)) for name, values in columns.items()}


def _typed(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """An all-number object column (None = missing) as float64; anything else unchanged."""
    present = [v for v in values.tolist() if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return np.asarray([math.nan if v is None else float(v) for v in values.tolist()], dtype=np.float64)
    return values


def _read_parquet(path: Path, exclude: set[str]) -> Columns:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ProfileError(f"{path}: reading parquet needs the 'pyarrow' package (pip install pyarrow), "
                           "or convert the file to .csv or .jsonl") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ProfileError(f"{path}: not a readable parquet file: {exc}") from None
    if table.num_rows == 0:
        raise ProfileError(f"{path}: no rows")
    columns: Columns = {}
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        if name in exclude:
            columns[name] = np.full(table.num_rows, None, dtype=object)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            columns[name] = np.asarray(column.cast(pa.float64()).fill_null(math.nan).to_numpy(), dtype=np.float64)
        elif pa.types.is_dictionary(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind) \
                or pa.types.is_boolean(kind):
            columns[name] = np.asarray(column.to_pylist(), dtype=object)
        else:
            raise ProfileError(f"{path}: column {name!r} has type {kind}, which a profile cannot sketch; "
                               f"leave it out with --exclude {name}")
    return columns


# --- building, writing and reading profiles ---------------------------------------------------

def build_profile_from_file(path: str | Path, *, model: str, version: str, score_column: str | None = "score",
                            exclude: Iterable[str] = (), bins: int = 100, top_k: int = 20) -> ReferenceProfile:
    """`read_columns` + `build_profile`, with every problem raised as a ProfileError naming the file."""
    excluded = list(exclude)
    columns = read_columns(path, excluded)
    try:
        return build_profile(columns, model=model, version=version, score_column=score_column, exclude=excluded,
                             bins=bins, top_k=top_k)
    except ValueError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def write_profile(profile: ReferenceProfile, path: str | Path) -> None:
    Path(path).write_text(profile.to_json(indent=1) + "\n", encoding="utf-8")


def read_profile(path: str | Path) -> ReferenceProfile:
    p = Path(path)
    try:
        return ReferenceProfile.from_json(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{p}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ProfileError(f"{p}: {exc}") from None


# --- MLflow ----------------------------------------------------------------------------------

def artifact_path(model: str, version: str) -> str:
    """Where a version's profile lives in its run's artifacts."""
    return f"{ARTIFACT_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', model)}/v{version}.json"


def log_to_mlflow(profile: ReferenceProfile, tracking_uri: str, registry_uri: str | None = None) -> str:
    """Store `profile` as an artifact of the run its model version was registered from, and tag
    the version with the artifact's URI (`runs:/<run_id>/<path>`), which is returned."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    where = f"MLflow at {redact_uri(registry_uri or tracking_uri)}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    model, version = profile.model, profile.version
    try:
        found = client.get_model_version(model, version)
    except MlflowException as exc:
        raise ProfileError(f"{where}: model {model!r} version {version!r} not found: "
                           f"{redact_text(exc.message, tracking_uri, registry_uri or '')}") from exc
    if not found.run_id:
        raise ProfileError(f"{where}: model {model!r} version {version!r} was not registered from a run, so there "
                           "is no run to store the profile in; register versions from a run")
    path = artifact_path(model, version)
    uri = f"runs:/{found.run_id}/{path}"
    try:
        client.log_text(found.run_id, profile.to_json(), path)
        client.set_model_version_tag(model, version, PROFILE_TAG, uri)
    except MlflowException as exc:
        raise ProfileError(f"{where}: could not store the profile of model {model!r} version {version!r}: "
                           f"{redact_text(exc.message, tracking_uri, registry_uri or '')}") from exc
    return uri


def load_from_mlflow(model: str, version: str | int, tracking_uri: str | None = None,
                     registry_uri: str | None = None) -> ReferenceProfile:
    """The reference profile `log_to_mlflow` stored for `model` version `version`.

    tracking_uri None: MLflow's own default (MLFLOW_TRACKING_URI). Raises ProfileError when the
    version does not exist, has no profile tag, or its artifact is missing or not a profile of
    that version."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    version = str(version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    uris = (tracking_uri or mlflow.get_tracking_uri(), registry_uri or "")
    where = f"MLflow at {redact_uri(registry_uri or uris[0])}"
    try:
        found = client.get_model_version(model, version)
    except MlflowException as exc:
        raise ProfileError(f"{where}: model {model!r} version {version!r} not found: "
                           f"{redact_text(exc.message, *uris)}") from exc
    uri = (found.tags or {}).get(PROFILE_TAG)
    if not uri:
        raise ProfileError(f"{where}: model {model!r} version {version!r} has no reference profile (no tag "
                           f"{PROFILE_TAG!r}); build one with `mle-stream profile build DATA --model {model} "
                           f"--version {version} --log-to-mlflow`")
    match = re.fullmatch(r"runs:/([^/]+)/(.+)", uri)
    if match is None:
        raise ProfileError(f"{where}: tag {PROFILE_TAG!r} of model {model!r} version {version!r} is {uri!r}, "
                           "not a runs:/<run_id>/<path> URI")
    run_id, path = match.groups()
    try:
        with tempfile.TemporaryDirectory(prefix="mle-stream-profile-") as tmp:
            local = client.download_artifacts(run_id, path, dst_path=tmp)
            text = Path(local).read_text(encoding="utf-8")
    except (MlflowException, OSError) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise ProfileError(f"{where}: could not read {uri} (profile of model {model!r} version {version!r}): "
                           f"{redact_text(message, *uris)}") from exc
    try:
        profile = ReferenceProfile.from_json(text)
    except ValueError as exc:
        raise ProfileError(f"{where}: {uri}: {exc}") from None
    if (profile.model, profile.version) != (model, version):
        raise ProfileError(f"{where}: {uri} holds the profile of model {profile.model!r} version "
                           f"{profile.version!r}, not of {model!r} version {version!r}")
    return profile


def profiles_for(topologies: Iterable[Topology], tracking_uri: str) -> dict[str, dict[str, ReferenceProfile]]:
    """The reference profiles the worker compares with: for each topology with a drift section,
    those its baseline and candidate versions have in MLflow. A version without one is compared
    with the baseline's window instead (core/drift/live.py); that is logged, not an error, and so
    is an MLflow that cannot be read (the worker must not stop evaluating because of it)."""
    out: dict[str, dict[str, ReferenceProfile]] = {}
    wanted = [t for t in topologies if t.drift.enabled]
    local = missing_sqlite_store(tracking_uri)
    if wanted and local is not None:
        log.warning("drift: no reference profiles: the MLflow store %s does not exist (MLFLOW_TRACKING_URI)", local)
        return out
    for t in wanted:
        for version in (t.baseline_version, t.candidate_version):
            try:
                out.setdefault(t.model, {})[version] = load_from_mlflow(t.model, version, tracking_uri)
                log.info("drift of %s v%s: against its reference profile from MLflow", t.model, version)
            except ProfileError as exc:
                log.warning("drift of %s v%s: no reference profile (%s)", t.model, version, exc)
    return out
