"""Reading ``RUN_DIR/metrics.jsonl``, the metrics log training writes (``MetricsFileLogger``), without Lightning."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

FILENAME = "metrics.jsonl"


@dataclass
class RunLog:
    """What ``read_metrics`` returns: per-key ``(steps, values)`` series, the events, the final metrics."""

    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # lines that are not records training writes, e.g. "line 7"


def _record(line: str) -> dict | None:
    """One line as a record training writes (an event, or a step with numeric metrics), None otherwise."""
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or isinstance(rec.get("step"), bool):
        return None
    if "event" in rec:
        return rec if isinstance(rec["event"], str) else None
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in metrics.values()):
        return None
    return rec


def read_metrics(path: str | Path) -> RunLog:
    """Parse a metrics file; a torn last line (a job killed mid-write) or any other line that is not a record
    is skipped and named in ``skipped``."""
    records, skipped = [], []
    lines = Path(path).read_bytes().decode("utf-8", "replace").splitlines()
    for n, line in enumerate(lines, 1):
        rec = _record(line) if line.strip() else None
        if rec is None:
            if line.strip() and n < len(lines):  # a torn last line is what a kill leaves: expected, not noted
                skipped.append(f"line {n}")
            continue
        records.append(rec)
    kept: list[dict] = []
    for rec in records:
        if rec.get("event") == "resume":  # the new job replays the steps after its checkpoint
            # values are logged at Lightning's step (optimizer steps done - 1); events at steps done
            kept = [r for r in kept if "event" in r or r["step"] < rec["step"]]
        kept.append(rec)
    log = RunLog(skipped=skipped)
    for rec in kept:
        if "event" in rec:
            log.events.append(rec)
            if rec["event"] == "end":
                log.final = {k: v for k, v in (rec.get("metrics") or {}).items() if v is not None}
            continue
        for key, value in rec["metrics"].items():
            steps, values = log.series.setdefault(key, ([], []))
            steps.append(rec["step"])
            values.append(float("nan") if value is None else value)
    if not log.final:  # preempted or killed: the last value of every key
        log.final = {k: v[-1] for k, (_, v) in log.series.items() if v and math.isfinite(v[-1])}
    return log
