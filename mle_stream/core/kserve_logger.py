"""KServe's inference logger: its CloudEvents, and a request/response pair of them as Prediction records.

A KServe InferenceService with `logger: {mode: all, url: ...}` posts two binary-mode CloudEvents per
inference call (KServe pkg/logger/handler.go, worker.go): one of type REQUEST_TYPE with the request
body, one of type RESPONSE_TYPE with the response body (only for a 200 answer), both with the same
`ce-id` (the caller's `Ce-Id` request header, else a fresh UUID). Attributes are HTTP headers:
ce-id, ce-type, ce-source (the pod's name), ce-time (RFC 3339, when the request arrived or the
response was read), ce-inferenceservicename, ce-namespace, ce-component, ce-endpoint, ce-metadata
(the request headers named in logger.metadataHeaders, JSON {name: [values]}) and ce-annotations (the
InferenceService annotations named in logger.metadataAnnotations, JSON {key: value}). Bodies are the
v1 protocol ({"instances": [...]} / {"predictions": [...]}) or the v2 Open Inference Protocol
({"inputs": [tensor]} / {"outputs": [tensor]}, tensor = {name, shape, datatype, data}).

`parse_event` reads one event; `to_predictions` maps a pair through an IngestMapping (the
topology's `ingest:` section) to one Prediction per instance. Both raise Rejected, whose `reason`
is one of a few fixed codes (a metric label) and whose message names the field. Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mle_stream.core.events import LabelValue, Prediction
from mle_stream.core.tasks import task_for
from mle_stream.errors import InvalidEvent

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
KINDS = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}

# Reasons a body or a pair is refused (the `reason` label of the rejected-events metric).
REASONS = ("headers", "body", "unknown_inference_service", "duplicate", "mismatch", "mapping", "version")

DEFAULT_VERSION = ("{annotation:mle-stream.io/version}", "{revision}")
# A Knative revision's pod is named <isvc>-<component>-<5-digit revision>-deployment-<hash>-<hash>.
_REVISION = re.compile(r"-(\d{5})-deployment-")
_PLACEHOLDER = re.compile(r"\{([a-z]+)(?::([^{}]*))?\}")
PLACEHOLDERS = ("annotation", "header", "ce", "revision")
MAX_ID_CHARS = 512
MAX_FEATURES = 1000  # per prediction: an image or an embedding is not a set of features to watch


class Rejected(ValueError):
    """An event or pair that cannot become predictions: `reason` is a code from REASONS, the message
    says what was wrong and where."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IngestMapping:
    """How a model's InferenceService events become predictions (the topology's `ingest:` section).

    inference_service: the ce-inferenceservicename that feeds this model (None: the model's name).
    namespace: only events from this ce-namespace (None: any).
    output: the response field the score (scores, value) is read from: a v2 output tensor's name or
        a key of a v1 prediction object (None: the first v2 output other than label_output; a v1
        prediction itself).
    index: the position in that output when it holds a list per instance (binary: the positive
        class's probability; None: 1 of a pair, 0 of a single value).
    classes: multiclass: the class names of the output's positions (empty: "0", "1", ...).
    label_output: where the predicted label is read, like `output` (None: no predicted label).
    features: "auto" (every scalar of an instance or input tensor), "none", or a tuple of names for
        the positions of list instances / tensor rows.
    inputs: v2: the input tensors that become features (empty: all).
    version: templates tried in order; the first whose placeholders all resolve is the version.
    """

    inference_service: str | None = None
    namespace: str | None = None
    output: str | None = None
    index: int | None = None
    classes: tuple[str, ...] = ()
    label_output: str | None = None
    features: str | tuple[str, ...] = "auto"
    inputs: tuple[str, ...] = ()
    version: tuple[str, ...] = DEFAULT_VERSION


@dataclass(frozen=True)
class LoggedEvent:
    """One logger event: `rows` holds one entry per instance (request: the instance, or for v2 a
    {input name: value} dict; response: the prediction, or for v2 a {output name: value} dict)."""

    kind: str
    id: str
    inference_service: str
    namespace: str
    source: str
    time_ms: int | None
    protocol: str
    rows: tuple[Any, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)  # every ce-* header, without the prefix


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str | bytes, where: str, reason: str) -> Any:
    """JSON from an untrusted body: Rejected(reason) for anything json.loads would not turn into plain data."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise Rejected(reason, f"{where}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, huge integers, NaN, bad UTF-8
        raise Rejected(reason, f"{where}: not valid JSON ({str(exc)[:200]})") from None


def _time_ms(text: str, name: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        millis = int(moment.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise Rejected("headers", f"{name}: expected an RFC 3339 time, got {text[:80]!r}") from None
    if moment.tzinfo is None:
        raise Rejected("headers", f"{name}: the time {text[:80]!r} has no time zone")
    if millis < 0:
        raise Rejected("headers", f"{name}: {text[:80]!r} is before 1970")
    return millis


def parse_event(headers: Mapping[str, str], body: bytes) -> LoggedEvent:
    """One CloudEvent in HTTP binary mode; `headers` with lowercase names. Raises Rejected."""
    attributes = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
    version = attributes.get("specversion")
    if version is not None and version != "1.0":
        raise Rejected("headers", f"ce-specversion: only CloudEvents 1.0 is understood, got {version[:40]!r}")
    kind = KINDS.get(attributes.get("type", ""))
    if kind is None:
        raise Rejected("headers", f"ce-type: expected {REQUEST_TYPE} or {RESPONSE_TYPE}, got "
                                  f"{attributes.get('type', '(missing)')[:120]!r}; is this KServe's inference logger "
                                  f"in binary mode?")
    for name in ("id", "inferenceservicename"):
        value = attributes.get(name, "")
        if not value.strip():
            raise Rejected("headers", f"ce-{name}: required and missing or empty")
        if len(value) > MAX_ID_CHARS:
            raise Rejected("headers", f"ce-{name}: longer than {MAX_ID_CHARS} characters")
    time_ms = _time_ms(attributes["time"], "ce-time") if attributes.get("time") else None
    document = parse_json(body, f"{kind} body", "body")
    if not isinstance(document, dict):
        raise Rejected("body", f"{kind} body: expected a JSON object, got {type(document).__name__}")
    protocol, rows = (_request_rows if kind == "request" else _response_rows)(document)
    return LoggedEvent(kind, attributes["id"], attributes["inferenceservicename"], attributes.get("namespace", ""),
                       attributes.get("source", ""), time_ms, protocol, tuple(rows), attributes)


def _request_rows(doc: dict[str, Any]) -> tuple[str, list[Any]]:
    if "instances" in doc:
        return "v1", _list(doc["instances"], "instances")
    if "inputs" in doc:
        return "v2", _tensor_rows(doc["inputs"], "inputs")
    raise Rejected("body", "request body: expected \"instances\" (v1 protocol) or \"inputs\" (v2 Open Inference "
                           f"Protocol), got keys {sorted(doc)[:10]}")


def _response_rows(doc: dict[str, Any]) -> tuple[str, list[Any]]:
    if "predictions" in doc:
        return "v1", _list(doc["predictions"], "predictions")
    if "outputs" in doc:
        return "v2", _tensor_rows(doc["outputs"], "outputs")
    raise Rejected("body", "response body: expected \"predictions\" (v1 protocol) or \"outputs\" (v2 Open Inference "
                           f"Protocol), got keys {sorted(doc)[:10]}")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise Rejected("body", f"{where}: expected a non-empty list, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten(data: Any, out: list[Any], where: str) -> None:
    # v2 tensors may send data nested by shape or flat in row-major order; both end up flat.
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if isinstance(item, dict):
                raise Rejected("body", f"{where}: expected numbers, booleans or strings, got an object")
            out.append(item)
        else:
            stack.pop()


def _tensor_rows(tensors: Any, where: str) -> list[dict[str, Any]]:
    """v2 tensors → one {tensor name: that instance's value} per instance (first dimension)."""
    tensors = _list(tensors, where)
    rows: list[dict[str, Any]] | None = None
    for j, tensor in enumerate(tensors):
        at = f"{where}[{j}]"
        if not isinstance(tensor, dict):
            raise Rejected("body",
                           f"{at}: expected a tensor object {{name, shape, datatype, data}}, got {_short(tensor)}")
        name, shape, data = tensor.get("name"), tensor.get("shape"), tensor.get("data")
        if not isinstance(name, str) or not name:
            raise Rejected("body", f"{at}.name: expected a non-empty string, got {_short(name)}")
        if (not isinstance(shape, list) or
                not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)):
            raise Rejected("body",
                           f"{at}.shape: expected a list of dimensions (whole numbers >= 0), got {_short(shape)}")
        if not isinstance(data, list):
            raise Rejected("body", f"{at}.data: expected a list, got {_short(data)}")
        flat: list[Any] = []
        _flatten(data, flat, f"{at}.data")
        count = shape[0] if shape else 1
        width = math.prod(shape[1:])
        if len(flat) != count * width:
            raise Rejected("body", f"{at}: shape {shape} holds {count * width} values, data has {len(flat)}")
        if count == 0:
            raise Rejected("body", f"{at}.shape: no instances (first dimension 0)")
        if rows is None:
            rows = [{} for _ in range(count)]
        elif len(rows) != count:
            raise Rejected("body", f"{at}.shape: {count} instances, but {where}[0] has {len(rows)}")
        for i, row in enumerate(rows):
            row[name] = flat[i] if len(shape) <= 1 else flat[i * width:(i + 1) * width]
    assert rows is not None  # _list refused an empty list
    return rows


# -- a pair → predictions ---------------------------------------------------------------------------


def prediction_id(event_id: str, index: int) -> str:
    """The id of the prediction for instance `index` (0-based) of the call logged under `event_id`."""
    return f"{event_id}:{index}"


def to_predictions(request: LoggedEvent, response: LoggedEvent, model: str, task: str,
                   mapping: IngestMapping, received_ms: int) -> list[Prediction]:
    """One Prediction per instance of a paired call; Rejected names the field that does not fit."""
    if len(request.rows) != len(response.rows):
        raise Rejected("mismatch", f"the request has {len(request.rows)} instances but the response "
                                   f"{len(response.rows)} predictions (ce-id {request.id!r})")
    version = resolve_version(mapping.version, request)
    timestamp = request.time_ms if request.time_ms is not None else response.time_ms
    timestamp = received_ms if timestamp is None else timestamp
    latency = (response.time_ms - request.time_ms
               if request.time_ms is not None and response.time_ms is not None else None)
    out = []
    for i, (instance, answer) in enumerate(zip(request.rows, response.rows)):
        where = f"predictions[{i}]" if response.protocol == "v1" else f"outputs (instance {i})"
        outputs = _outputs(task, _select(answer, mapping.output, where, response.protocol, mapping.label_output),
                           mapping, where)
        label = None if mapping.label_output is None else _label(
            _select(answer, mapping.label_output, where, response.protocol), where)
        features = _features(instance, mapping,
                             f"instances[{i}]" if request.protocol == "v1" else f"inputs (instance {i})")
        try:
            out.append(Prediction(prediction_id=prediction_id(request.id, i), model=model, version=version,
                                  timestamp=timestamp, predicted_label=label, features=features or None,
                                  latency_ms=float(latency) if latency is not None and latency >= 0 else None,
                                  **outputs))
        except InvalidEvent as exc:
            raise Rejected("mapping", f"{where}: {exc}") from None
    return out


def _select(answer: Any, name: str | None, where: str, protocol: str, skip: str | None = None) -> Any:
    if protocol == "v2":
        if name is None:  # the first output that is not the label's
            return next((v for k, v in answer.items() if k != skip), next(iter(answer.values())))
        if name not in answer:
            raise Rejected("mapping", f"outputs: no output named {name!r} (ingest.output / label_output); the "
                                      f"response has {', '.join(map(repr, answer))}")
        return answer[name]
    if name is None:
        if isinstance(answer, dict):
            raise Rejected("mapping", f"{where}: the prediction is an object "
                                      f"({', '.join(map(repr, list(answer)[:8]))}): set ingest.output to the key that "
                                      f"holds the score")
        return answer
    if not isinstance(answer, dict) or name not in answer:
        raise Rejected("mapping", f"{where}: expected an object with key {name!r} (ingest.output / label_output), "
                                  f"got {_short(answer)}")
    return answer[name]


def _finite(value: Any) -> bool:
    # JSON integers may be far beyond a float's range, where math.isfinite itself raises.
    return isinstance(value, float) and math.isfinite(value) or isinstance(value, int) and abs(value) < 2**63


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if not _finite(value):
        raise Rejected("mapping", f"{where}: expected a number, got {_short(value)}")
    return float(value)


def _outputs(task: str, value: Any, mapping: IngestMapping, where: str) -> dict[str, Any]:
    """The prediction's output field (the task's: score, scores or value) from the logged output."""
    field = task_for(task).output_field
    if field == "scores":  # a map of class scores; every other task's output is one number
        if isinstance(value, dict):
            return {"scores": {str(k): _number(v, f"{where}.{k}") for k, v in value.items()}}
        if not isinstance(value, list) or not value:
            raise Rejected("mapping", f"{where}: multiclass needs the class probabilities (a list or an object), "
                                      f"got {_short(value)}; serve predict_proba, or point ingest.output at them")
        names = mapping.classes or tuple(str(j) for j in range(len(value)))
        if len(names) != len(value):
            raise Rejected("mapping", f"{where}: {len(value)} probabilities for {len(names)} ingest.classes")
        return {"scores": {n: _number(v, f"{where}[{j}]") for j, (n, v) in enumerate(zip(names, value))}}
    if isinstance(value, list):
        index = mapping.index if mapping.index is not None else (1 if len(value) == 2 else 0)
        if not 0 <= index < len(value) or (mapping.index is None and len(value) > 2):
            raise Rejected("mapping", f"{where}: a list of {len(value)} values; set ingest.index to the position "
                                      f"to read (got index {mapping.index})")
        value, where = value[index], f"{where}[{index}]"
    number = _number(value, where)
    return {field: number}


def _label(value: Any, where: str) -> LabelValue:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected("mapping", f"{where}: the predicted label must be finite")
    if not isinstance(value, (bool, int, float, str)):
        raise Rejected("mapping",
                       f"{where}: the predicted label must be a boolean, number or string, got {_short(value)}")
    return value


def _feature_value(value: Any) -> float | str | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if _finite(value) else None
    return value if isinstance(value, str) else None


def _features(instance: Any, mapping: IngestMapping, where: str) -> dict[str, float | str]:
    """Scalars of one instance keyed by name; lists and objects nested deeper are not features."""
    if mapping.features == "none":
        return {}
    names = mapping.features if isinstance(mapping.features, tuple) else ()
    if isinstance(instance, dict):
        items: list[tuple[str, Any]] = []
        for key, value in instance.items():
            if mapping.inputs and key not in mapping.inputs:
                continue
            if isinstance(value, list):  # a v2 tensor row, or a v1 list column
                if names and len(value) != len(names):
                    raise Rejected("mapping", f"{where}.{key}: {len(value)} values for {len(names)} ingest.features")
                items.extend((names[j] if names else f"{key}.{j}", v) for j, v in enumerate(value))
            else:
                items.append((str(key), value))
    elif isinstance(instance, list):
        if names and len(instance) != len(names):
            raise Rejected("mapping", f"{where}: {len(instance)} values for {len(names)} ingest.features")
        items = [(names[j] if names else str(j), v) for j, v in enumerate(instance)]
    else:
        items = [(names[0] if names else "0", instance)]
    if len(items) > MAX_FEATURES:
        raise Rejected("mapping", f"{where}: {len(items)} values, more than {MAX_FEATURES} features; set "
                                  f"ingest.features: none, or name the input tensors to keep in ingest.inputs")
    out = {}
    for name, value in items:
        converted = _feature_value(value)
        if converted is not None:
            out[name] = converted
    return out


def _lookup(mapping_json: str | None, key: str, attribute: str) -> str | None:
    if not mapping_json:
        return None
    try:
        data = json.loads(mapping_json)
    except (ValueError, RecursionError):
        try:  # the CloudEvents HTTP binding allows percent-encoded header values
            data = json.loads(urllib.parse.unquote(mapping_json))
        except (ValueError, RecursionError):
            raise Rejected("headers", f"ce-{attribute}: not a JSON object") from None
    if not isinstance(data, dict):
        raise Rejected("headers", f"ce-{attribute}: not a JSON object")
    for name, value in data.items():
        if str(name).lower() == key.lower():
            value = value[0] if isinstance(value, list) and value else value
            return value if isinstance(value, str) else None
    return None


def _resolve(kind: str, arg: str | None, event: LoggedEvent) -> str | None:
    if kind == "revision":
        match = _REVISION.search(event.source)
        return str(int(match.group(1))) if match else None
    if kind == "ce":
        return event.attributes.get((arg or "").lower())
    if kind == "annotation":
        return _lookup(event.attributes.get("annotations"), arg or "", "annotations")
    return _lookup(event.attributes.get("metadata"), arg or "", "metadata")  # header


def resolve_version(templates: tuple[str, ...], event: LoggedEvent) -> str:
    """The first template whose placeholders all resolve to non-empty text, filled in."""
    for template in templates:
        missing = False

        def fill(match: re.Match[str]) -> str:
            nonlocal missing
            value = _resolve(match.group(1), match.group(2), event)
            missing = missing or not value
            return value or ""

        text = _PLACEHOLDER.sub(fill, template)
        if not missing and text.strip():
            return text[:MAX_ID_CHARS]
    raise Rejected("version", f"no version: none of ingest.version {list(templates)} resolves for ce-source "
                              f"{event.source[:120]!r} (annotations "
                              f"{event.attributes.get('annotations', '(none)')[:120]}); add the annotation to the "
                              f"InferenceService and list it in logger.metadataAnnotations, or end ingest.version with "
                              f"a fixed version")


def check_version_template(template: str) -> str:
    """A version template's problem (for the topology reader), or raise ValueError."""
    for match in _PLACEHOLDER.finditer(template):
        kind, arg = match.group(1), match.group(2)
        if kind not in PLACEHOLDERS:
            raise ValueError(f"{template!r}: unknown placeholder {{{kind}}}; expected {{annotation:KEY}}, "
                             f"{{header:NAME}}, {{ce:ATTRIBUTE}} or {{revision}}")
        if (kind == "revision") != (arg is None) or (arg is not None and not arg.strip()):
            raise ValueError(f"{template!r}: {{{kind}}} " + ("takes no argument" if kind == "revision"
                                                             else "needs a name, e.g. {" + kind + ":NAME}"))
    if "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
        raise ValueError(f"{template!r}: a brace outside a placeholder")
    return template
