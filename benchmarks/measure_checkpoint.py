#!/usr/bin/env python
"""What a checkpoint of N pending predictions costs: size, time to write, time to read and restore,
and the memory of the process that holds them (docs/operations.md, "State and restarts").

    python benchmarks/measure_checkpoint.py [--predictions 1000000] [--json]

Uses MLE_BOOTSTRAP_SERVERS, or starts the embedded broker. Two fresh processes, so that each RSS
figure is one process's own: the *writer* decodes N binary predictions without labels (Avro, 500
per message, as the client sends them) through the worker's processor, then snapshots and writes
the checkpoint; the *restorer* reads the checkpoint back and restores the evaluator, as a worker
does when it is assigned the partition.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import random
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOPOLOGY = """\
model: fraud
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 5m, grace: 1m, retention: 2h}
"""
PER_MESSAGE = 500


def rss_mb() -> float:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parts(bootstrap: str, topic: str, group: str) -> tuple[Any, Any]:
    from mle_stream.config import Topics
    from mle_stream.core.signing import Signer
    from mle_stream.core.topology import parse_topology
    from mle_stream.stream.checkpoints import CheckpointedProcessor, CheckpointStore
    from mle_stream.stream.processor import StreamProcessor

    processor = StreamProcessor({"fraud": parse_topology(TOPOLOGY)}, Topics(), Signer("measure", b"m" * 32))
    return CheckpointedProcessor(processor), CheckpointStore(bootstrap, topic, group)


def writer(bootstrap: str, topic: str, group: str, n: int, out: Any) -> None:
    from mle_stream import wire
    from mle_stream.core.events import Prediction
    from mle_stream.stream.processor import Incoming

    tracked, store = parts(bootstrap, topic, group)
    tracked.assign(0, None)
    report: dict[str, Any] = {"rss_start_mb": rss_mb()}
    rng = random.Random(1)
    now = int(time.time() * 1000)
    ingest_s = 0.0
    for offset, first in enumerate(range(0, n, PER_MESSAGE)):
        batch = [Prediction(prediction_id=str(uuid.UUID(int=rng.getrandbits(128))), model="fraud",
                            version="2" if rng.random() < 0.1 else "1", timestamp=now - 3_600_000 + i * 3_600_000 // n,
                            score=rng.random(), latency_ms=rng.uniform(1, 50))
                 for i in range(first, min(n, first + PER_MESSAGE))]
        message = Incoming(tracked.inputs[0], 0, offset, wire.encode_predictions(batch))
        started = time.perf_counter()
        tracked.process([message], [b"fraud"])
        ingest_s += time.perf_counter() - started
    pending = tracked.processor.evaluators["fraud"].join.pending[0]
    report.update(pending=pending, ingest_s=ingest_s, rss_pending_mb=rss_mb())
    started = time.perf_counter()
    checkpoint = tracked.snapshot(0)
    report["snapshot_s"] = time.perf_counter() - started
    written = store.write(checkpoint)
    store.close()
    report.update(bytes=written.bytes, chunks=written.chunks, encode_s=written.encode_s, send_s=written.send_s,
                  write_total_s=time.perf_counter() - started, rss_after_write_mb=rss_mb(), peak_rss_mb=peak_rss_mb())
    out.put(report)


def restorer(bootstrap: str, topic: str, group: str, out: Any) -> None:
    tracked, store = parts(bootstrap, topic, group)
    report: dict[str, Any] = {"rss_start_mb": rss_mb()}
    started = time.perf_counter()
    found = store.read([0])
    report["read_s"] = time.perf_counter() - started
    tracked.assign(0, found.pop(0))
    report.update(restore_s=time.perf_counter() - started - report["read_s"],
                  read_restore_s=time.perf_counter() - started)
    gc.collect()  # the checkpoint's parsed JSON is garbage now, as it is in the worker after a restore
    report.update(pending=tracked.processor.evaluators["fraud"].join.pending[0],
                  rss_restored_mb=rss_mb(), peak_rss_mb=peak_rss_mb())
    out.put(report)


def in_process(target: Any, *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result: dict[str, Any] = queue.get(timeout=1800)
    process.join(60)
    if process.exitcode:
        raise SystemExit(f"{target.__name__} exited with status {process.exitcode}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from mle_stream.config import Settings
    from mle_stream.kafka import bootstrap_servers, ensure_state_topic

    topic, group = f"measure-{uuid.uuid4().hex[:8]}.state", "measure"
    with bootstrap_servers(Settings.from_env(), embedded=True) as bootstrap:
        ensure_state_topic(bootstrap, topic, 1)
        write = in_process(writer, bootstrap, topic, group, args.predictions)
        restore = in_process(restorer, bootstrap, topic, group)
    if restore["pending"] != write["pending"]:
        raise SystemExit(f"restored {restore['pending']} pending predictions, wrote {write['pending']}")
    result = {"predictions": args.predictions, "write": write, "restore": restore}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        w, r = write, restore
        print(f"{w['pending']:,} pending predictions; ingest {w['ingest_s']:.1f} s\n"
              f"checkpoint: {w['bytes']:,} bytes in {w['chunks']} chunks; snapshot {w['snapshot_s']:.2f} s + "
              f"encode {w['encode_s']:.2f} s + write {w['send_s']:.2f} s = {w['write_total_s']:.2f} s\n"
              f"writer RSS: {w['rss_start_mb']:.0f} MB empty, {w['rss_pending_mb']:.0f} MB holding them, "
              f"{w['rss_after_write_mb']:.0f} MB after the checkpoint (peak {w['peak_rss_mb']:.0f} MB)\n"
              f"read {r['read_s']:.2f} s + restore {r['restore_s']:.2f} s = {r['read_restore_s']:.2f} s\n"
              f"restorer RSS: {r['rss_start_mb']:.0f} MB empty, {r['rss_restored_mb']:.0f} MB restored "
              f"(peak {r['peak_rss_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
