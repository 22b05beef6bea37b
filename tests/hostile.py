"""Generated hostile input for the topics mle-stream reads: what anyone who reaches the broker can
publish. Shared by the tests that throw it at the pure processor and at the running processes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import strategies as st

from mle_stream import wire
from mle_stream.core.events import Command, CommandKind, Label, Prediction

# Any code point, lone surrogates included (JSON spells them as \\uDCFF escapes).
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=24)
NASTY = st.sampled_from(["\udcff", "\ud800", "é", "", "\x00", "a" * 300, "fraud", "1", "2", "💥", "\u202e"])
TEXT = st.one_of(ANY_TEXT, NASTY)
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


def _json(value: Any) -> bytes:
    # allow_nan: Python writes NaN/Infinity, which strict JSON readers refuse: part of the test.
    return json.dumps(value).encode()


def _prediction_json(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"prediction_id": TEXT, "model": st.one_of(st.sampled_from(models), TEXT),
         "version": st.one_of(st.sampled_from(["1", "2"]), TEXT),
         "timestamp": st.one_of(st.integers(-5, 2**64), JSON_VALUE), "score": st.one_of(st.floats(), JSON_VALUE)},
        optional={"segment": st.dictionaries(TEXT, JSON_VALUE, max_size=3),
                  "features": st.dictionaries(TEXT, JSON_VALUE, max_size=3),
                  "latency_ms": JSON_VALUE, "error": JSON_VALUE, "scores": JSON_VALUE, "value": JSON_VALUE,
                  "predicted_label": JSON_VALUE})


def _label_json(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"prediction_id": TEXT, "model": st.one_of(st.sampled_from(models), TEXT),
         "timestamp": st.one_of(st.integers(-5, 2**64), JSON_VALUE), "label": JSON_VALUE})


def _valid_avro_nonsense(models: list[str]) -> st.SearchStrategy[bytes]:
    """Valid Avro batches whose values make no sense: far-future or ancient timestamps, unknown
    versions, scores at the edges, many segment values, long ids."""
    clean = st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)),
                    min_size=1, max_size=200)
    prediction = st.builds(
        Prediction, prediction_id=clean, model=st.one_of(st.sampled_from(models), clean),
        version=st.one_of(st.sampled_from(["1", "2"]), clean), timestamp=st.integers(0, 2**62),
        score=st.floats(0, 1), latency_ms=st.one_of(st.none(), st.floats(0, 1e300)),
        segment=st.one_of(st.none(), st.dictionaries(clean, clean, max_size=3)),
        features=st.one_of(st.none(), st.dictionaries(clean, st.floats(-1e300, 1e300), max_size=4)))
    label = st.builds(Label, prediction_id=clean, model=st.one_of(st.sampled_from(models), clean),
                      timestamp=st.integers(0, 2**62), label=st.one_of(st.booleans(), st.integers(-5, 5), clean))
    return st.one_of(st.lists(prediction, min_size=1, max_size=5).map(wire.encode_predictions),
                     st.lists(label, min_size=1, max_size=5).map(wire.encode_labels))


@st.composite
def _tampered(draw: st.DrawFn, command: Command) -> bytes:
    """A signed command with one field changed after signing, as Avro or JSON."""
    name = draw(st.sampled_from([f.name for f in dataclasses.fields(Command)]))
    current = getattr(command, name)
    if name == "kind":
        value: Any = draw(st.sampled_from([k for k in CommandKind if k is not command.kind]))
    elif name == "traffic":
        value = draw(st.dictionaries(st.sampled_from(["1", "2", "3"]), st.integers(0, 100), max_size=2)
                     .filter(lambda t: t != dict(current)))
    elif isinstance(current, int):
        value = draw(st.integers(0, 2**62).filter(lambda v: v != current))
    else:
        value = draw(TEXT.filter(lambda v: v != current))
    changed = dataclasses.replace(command, **{name: value})
    if draw(st.booleans()):
        try:
            return wire.encode_command(changed)
        except Exception:  # a value Avro cannot carry: sent as JSON instead, as a forger would
            pass
    return _json(wire.to_json_dict(changed))


def _command_json(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"command_id": TEXT, "kind": st.one_of(st.sampled_from([k.value for k in CommandKind]), TEXT),
         "model": st.one_of(st.sampled_from(models), TEXT), "baseline_version": TEXT, "candidate_version": TEXT,
         "traffic": st.one_of(st.dictionaries(TEXT, st.integers(-(2**40), 2**40), max_size=3), JSON_VALUE),
         "reason": TEXT, "rule": TEXT, "window_start": st.integers(-5, 2**64), "window_end": st.integers(-5, 2**64),
         "evidence": TEXT, "policy_version": TEXT, "issued_at": st.one_of(st.integers(-5, 2**64), JSON_VALUE),
         "signature": st.one_of(TEXT, st.text("0123456789abcdef", min_size=64, max_size=64))},
        optional={"expires_at": JSON_VALUE, "key_id": JSON_VALUE})


def hostile_messages(predictions: str, labels: str, commands: str, models: list[str],
                     signed: Command) -> st.SearchStrategy[tuple[str, bytes]]:
    """(topic, value) pairs: arbitrary bytes, odd JSON, records with odd types and strings, valid Avro
    with nonsense values, and commands with every field tampered (from `signed`)."""
    anything = st.one_of(st.binary(max_size=2000), JSON_VALUE.map(_json),
                         st.tuples(st.sampled_from(sorted(fp for s in wire.schemas().values()
                                                          for fp in s.fingerprints)),
                                   st.binary(max_size=60)).map(lambda fb: wire.AVRO_MARKER + fb[0] + fb[1]))
    return st.one_of(
        st.tuples(st.sampled_from([predictions, labels, commands]), anything),
        st.tuples(st.just(predictions), st.one_of(_prediction_json(models).map(_json),
                                                  st.lists(_prediction_json(models), max_size=4).map(_json))),
        st.tuples(st.just(labels), st.one_of(_label_json(models).map(_json),
                                             st.lists(_label_json(models), max_size=4).map(_json))),
        st.tuples(st.sampled_from([predictions, labels]), _valid_avro_nonsense(models)),
        st.tuples(st.just(commands), _command_json(models).map(_json)),
        st.tuples(st.just(commands), _tampered(signed)),
    )
