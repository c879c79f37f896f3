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


def read_metrics(path: str | Path) -> RunLog:
    """Parse a metrics file; a torn last line (a job killed mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    kept: list[dict] = []
    for rec in records:
        if rec.get("event") == "resume":  # the new job replays the steps after its checkpoint
            # values are logged at Lightning's step (optimizer steps done - 1); events at steps done
            kept = [r for r in kept if "event" in r or r["step"] < rec["step"]]
        kept.append(rec)
    log = RunLog()
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
