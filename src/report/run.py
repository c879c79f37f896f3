"""A training run folder as the report sees it: config, metrics file, samples, checkpoints, metrics JSON."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..checkpoint import checkpoint_step  # reads the step with a weights-only, memory-mapped load
from ..config import REDACTED, data_names, redact
from .errors import ReportError
from .metrics_jsonl import FILENAME, RunLog, read_metrics

SAMPLE = re.compile(r"^step(\d+)_(\d+)(\.png|\.wav|\.nii\.gz|\.nii)$")
HINT = "pass the paths.output_dir of a training run (the folder holding config.yaml, checkpoints/ and samples/)"


@dataclass
class Run:
    path: Path
    name: str
    shown: str  # the folder as the user named it (the page shows no more of the machine's paths than that)
    config: dict
    log: RunLog | None
    samples: dict[int, list[Path]] = field(default_factory=dict)  # step -> files, in sample order
    prompts: list[str] = field(default_factory=list)  # the rows of a text model's previews (samples/prompts.txt)
    checkpoints: list[tuple[str, int, int]] = field(default_factory=list)  # (name, step or -1, bytes)
    results: list[tuple[Path, dict]] = field(default_factory=list)  # *.metrics.json files and their content
    wandb_id: str | None = None
    skipped: list[str] = field(default_factory=list)  # what the page leaves out, each "FILE (why)"
    private: bool = False  # privacy.patient_data: no path, file name or class name on the page

    @property
    def domain(self) -> str:
        return str((self.config.get("domain") or {}).get("name") or (self.config.get("media") or {}).get("kind"))

    @property
    def media(self) -> dict:
        return dict(self.config.get("media") or {})

    @property
    def events(self) -> list[dict]:
        return self.log.events if self.log else []


def load_run(path: str | Path) -> Run:
    path = Path(path).expanduser()
    if not path.exists():
        raise ReportError(f"{path} does not exist; {HINT}.")
    if not path.is_dir():
        raise ReportError(f"{path} is a file, not a run folder; {HINT}.")
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise ReportError(f"{path} is not a run folder (it has no config.yaml); {HINT}.")
    skipped = []
    raw = config_file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
        skipped.append("config.yaml (not UTF-8: undecodable bytes shown as \ufffd)")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ReportError(f"{config_file} is not valid YAML ({e.__class__.__name__}); it should be the "
                          "config a training run wrote, so pass an untouched run folder.") from None
    if not isinstance(config, dict):
        raise ReportError(f"{config_file} does not hold a run config (a mapping); {HINT}.")
    private = bool((config.get("privacy") or {}).get("patient_data"))
    if private:
        # the page is made to be shared: as in the W&B config, no path, no data file name and no class name
        # (each may name a patient)
        names = data_names((config.get("datamodule") or {}).get("path") or "")
        config = redact(config, data_path=True, class_names=True, names=names)
    metrics = path / FILENAME
    # with patient data the run folder's name (it may be a patient's) gives way to a stable pseudonym
    name = (f"run-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}" if private
            else path.resolve().name)
    run = Run(path=path.resolve(), name=name, shown=REDACTED if private else str(path), config=config,
              log=read_metrics(metrics) if metrics.is_file() else None, skipped=skipped, private=private)
    if run.log is not None and run.log.skipped:
        lines = ", ".join(run.log.skipped[:5]) + (" ..." if len(run.log.skipped) > 5 else "")
        run.skipped.append(f"{FILENAME} {lines} (not a metrics record)")
    for f in sorted((path / "samples").glob("step*")):
        m = SAMPLE.match(f.name)
        if m:
            run.samples.setdefault(int(m.group(1)), []).append(f)
    prompts = path / "samples" / "prompts.txt"
    if prompts.is_file() and not (config.get("privacy") or {}).get("patient_data"):  # never written then, either
        run.prompts = prompts.read_text(encoding="utf-8").splitlines()
    run.checkpoints = [checkpoint_info(c) for c in sorted((path / "checkpoints").glob("*.ckpt"))]
    for f in sorted(path.rglob("*.metrics.json")):
        if "wandb" in f.relative_to(path).parts:
            continue
        try:
            run.results.append((f, json.loads(f.read_bytes().decode("utf-8"))))
        except (ValueError, RecursionError):  # not JSON, not UTF-8: the page is built without it
            where = "a *.metrics.json file" if private else str(f.relative_to(path))  # its name may be a patient's
            run.skipped.append(f"{where} (not valid JSON)")
    id_file = path / "wandb" / "run-id"
    run.wandb_id = id_file.read_text().strip() if id_file.is_file() else None
    return run


def checkpoint_info(path: Path) -> tuple[str, int, int]:
    """Name, stored ``global_step`` (-1 when unreadable) and size of a checkpoint file or sharded folder."""
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return path.name, checkpoint_step(path), size


def flatten(node, prefix: str = "") -> dict[str, object]:
    """Nested config -> ``{"optim.lr": 0.001, ...}`` (lists kept as values)."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def config_differences(runs: list[Run]) -> dict[str, list[object]]:
    """Keys whose value differs between runs (a missing key counts as different), in config order."""
    flats = [flatten(r.config) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    missing = object()
    diff = {}
    for k in keys:
        values = [f.get(k, missing) for f in flats]
        if any(v != values[0] for v in values[1:]):
            diff[k] = [None if v is missing else v for v in values]
    return diff
