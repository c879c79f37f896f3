"""One self-contained HTML page for one or several runs: every plot and sample is embedded as base64."""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

import yaml

import src.report.media as media  # the modules, not the package (whose __init__ imports this file)
import src.report.plots as plots

from ..config import redact
from .run import Run, config_differences

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.baseline td{color:#666;font-style:italic}img.plot{max-width:100%;display:block;margin:.5em 0}
img.sample-grid{image-rendering:pixelated;width:200px}.plots{display:grid;grid-template-columns:1fr 1fr;gap:.4em}
.plots img.plot{margin:0}.sample-row{display:flex;flex-wrap:wrap;gap:.2em 1em}.sample-step h4{margin:.3em 0}
figure{display:inline-block;margin:.3em .6em .3em 0;
vertical-align:top}figcaption{font-size:.75em;color:#555}pre{background:#f8f8f8;padding:.6em;font-size:.75em;
max-height:24em;overflow:auto}.note{color:#666;font-size:.85em}audio{width:240px;display:block}
"""

DOMAIN_SKIP = ("loss", "grad_norm", "samples_per_sec", "lr-")


def _img(data: bytes, cls: str, alt: str, **attrs) -> str:
    extra = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in attrs.items())
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{media.data_uri(data, "image/png")}"{extra}>'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return html.escape(json.dumps(v))
    return html.escape(str(v))


def _table(header: list[str], rows: list[list], row_classes: list[str] | None = None, cls: str = "") -> str:
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{_fmt(v)}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
                        else f"<td>{_fmt(v)}</td>" for v in row)
        out.append(f"<tr{rc}>{cells}</tr>")
    return "".join(out) + "</table>"


def _status(run: Run) -> str:
    if run.log is None:
        return "no metrics.jsonl (curves unavailable)"
    kinds = [e["event"] for e in run.events]
    resumes, preempts = kinds.count("resume"), kinds.count("preempted")
    last = kinds[-1] if kinds else "?"
    state = {"end": "finished", "preempted": "preempted", "error": "stopped by an error"}.get(last, "running or killed")
    return state + (f", resumed {resumes}x" if resumes else "") + (f", preempted {preempts}x" if preempts else "")


def overview(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        step = max((e["step"] for e in r.events), default=None)
        rows.append([r.name, r.domain, r.shown, step if step is not None else "-", _status(r),
                     r.wandb_id or "-"])
    return _table(["run", "domain", "folder", "last step", "status", "W&B run id"], rows, cls="overview")


def skipped_notes(runs: list[Run]) -> str:
    """What each run folder held that the page could not use (damaged files, unreadable lines)."""
    return "".join(f'<p class="note skipped">Left out of {html.escape(r.name)}: '
                   f"{html.escape('; '.join(r.skipped))}.</p>" for r in runs if r.skipped)


def config_section(runs: list[Run]) -> str:
    parts = []
    if len(runs) > 1:
        diff = config_differences(runs)
        rows = [[k, *v] for k, v in diff.items()]
        parts.append("<h3>Differences between runs</h3>" + (
            _table(["key", *[r.name for r in runs]], rows, cls="config-diff") if rows
            else '<p class="note">The runs have the same config.</p>'))
    for r in runs:
        text = html.escape(yaml.safe_dump(r.config, sort_keys=False))
        parts.append(f'<details class="config"><summary>config.yaml of {html.escape(r.name)}</summary>'
                     f"<pre>{text}</pre></details>")
    return "".join(parts)


def domain_metric_names(runs: list[Run]) -> list[str]:
    names = {n for r in runs if r.log for n in r.log.series if n.startswith("val/") and
             not any(s in n for s in DOMAIN_SKIP)}
    return sorted(names)


def curves_section(runs: list[Run]) -> str:
    figs = [("loss", plots.curve(runs, ["train/loss", "val/loss"], "training and validation loss", "loss",
                                  log_y=True))]
    figs += [(f"buckets-{i}", plots.buckets(r)) for i, r in enumerate(runs)]
    figs += [("lr", plots.curve(runs, ["lr-*"], "learning rate", "lr")),
             ("grad_norm", plots.curve(runs, ["train/grad_norm"], "gradient norm", "norm",
                                       log_y=True)),
             ("throughput", plots.curve(runs, ["perf/samples_per_sec"], "throughput", "samples / s")),
             ("domain", plots.domain_metrics(runs, domain_metric_names(runs)))]
    drawn = [_img(data, "plot", name, plot=name) for name, data in figs if data]
    if not drawn:
        return '<p class="note">No run has a metrics.jsonl with logged values.</p>'
    note = ('<p class="note">Vertical lines: green dashed = resumed from a checkpoint, red dotted = preempted '
            "(saved and stopped on a signal).</p>")
    return note + '<div class="plots">' + "".join(drawn) + "</div>"


def _prompt_rows(prompts: list[str]) -> str:
    """A text model's preview rows, one per prompt (empty without prompts)."""
    if not prompts:
        return ""
    return html.escape(", one row per prompt: " + "; ".join(f'{i}: "{p}"' for i, p in enumerate(prompts)))


def _drawn(run: Run, f: Path, draw):
    """``draw(f)``, or None with ``f`` noted in ``run.skipped`` when the sample file is damaged."""
    try:
        return draw(f)
    except media.UNREADABLE as e:
        why = type(e).__name__ if run.private else f"{type(e).__name__}: {e}"  # a reader's message may quote a path
        run.skipped.append(f"samples/{f.name} ({why})")
        return None


def _readable(run: Run, f: Path, check) -> bool:
    return _drawn(run, f, check) is not None


def samples_section(runs: list[Run], max_steps: int, max_clips: int) -> str:
    parts = []
    for r in runs:
        parts.append(f"<h3>{html.escape(r.name)} ({html.escape(r.domain)})</h3>")
        if not r.samples:
            parts.append('<p class="note">No samples under samples/.</p>')
            continue
        most = max_steps if r.media.get("kind") == "image" else max(1, max_steps // 3)  # sound and volumes weigh more
        steps = media.pick_steps(list(r.samples), most)
        if len(steps) < len(r.samples):
            parts.append(f'<p class="note">{len(steps)} of {len(r.samples)} sample steps shown, evenly spread.</p>')
        parts.append('<div class="sample-row">')
        for step in steps:
            files = r.samples[step]
            parts.append(f'<div class="sample-step" data-step="{step}"><h4>step {step}</h4>')
            if files[0].suffix == ".png":
                readable = [f for f in files if _readable(r, f, media.check_image)]
                if readable:
                    parts.append(f"<figure>{_img(media.image_grid(readable), 'sample-grid', f'samples at step {step}')}"
                                 f"<figcaption>{len(readable)} EMA samples{_prompt_rows(r.prompts)}</figcaption>"
                                 "</figure>")
            elif files[0].suffix == ".wav":
                for f in files[:max_clips]:
                    spectrogram = _drawn(r, f, media.mel_spectrogram)
                    if spectrogram is None:
                        continue
                    audio = media.data_uri(f.read_bytes(), "audio/wav")
                    parts.append(f'<figure><audio class="sample-audio" controls preload="none" src="{audio}"></audio>'
                                 f"{_img(spectrogram, 'spectrogram', f'mel spectrogram of {f.name}')}"
                                 f"<figcaption>{html.escape(f.name)}</figcaption></figure>")
            else:
                for f in files[:max_clips]:
                    slices = _drawn(r, f, media.mri_slices)
                    if slices is not None:
                        parts.append(f"<figure>{_img(slices, 'mri-slices', f'slices of {f.name}')}"
                                     f"<figcaption>{html.escape(f.name)}</figcaption></figure>")
            parts.append("</div>")
        parts.append("</div>")
    return "".join(parts)


def metrics_section(runs: list[Run]) -> str:
    names = domain_metric_names(runs)
    losses = sorted({n for r in runs if r.log for n in r.log.final if "loss" in n})
    parts = []
    if names:
        rows = [[n, *[r.log.final.get(n, "-") if r.log else "-" for r in runs]] for n in names]
        parts.append("<h3>Domain metrics (final validation)</h3>" +
                     _table(["metric", *[r.name for r in runs]], rows, cls="domain-metrics"))
    else:
        parts.append('<p class="note">No domain metrics were logged (the domain config has no metrics: node).</p>')
    if losses:
        rows = [[n, *[r.log.final.get(n, "-") if r.log else "-" for r in runs]] for n in losses]
        parts.append("<h3>Final losses</h3>" + _table(["loss", *[r.name for r in runs]], rows, cls="final-losses"))
    return "".join(parts)


MAIN_ROWS = ("reconstruction", "restoration", "restored", "result", "diffusion")


def _numeric_rows(node: dict) -> dict[str, dict[str, float]]:
    """The sub-dicts of ``node`` (or of its ``metrics``) whose values are numbers: one table row each."""
    node = node.get("metrics", node) if isinstance(node.get("metrics"), dict) else node
    return {k: {m: v for m, v in sub.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for k, sub in node.items() if isinstance(sub, dict) and
            any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sub.values())}


def results_section(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        for path, data in r.results:
            rows = _numeric_rows(data) if isinstance(data, dict) else {}
            if not rows:
                continue
            cols = list(dict.fromkeys(m for sub in rows.values() for m in sub))
            order = sorted(rows, key=lambda k: (k not in MAIN_ROWS, list(rows).index(k)))
            table = _table(["method", *cols], [[k + ("" if k in MAIN_ROWS else " (baseline)"),
                                               *[rows[k].get(c, "-") for c in cols]] for k in order],
                           ["" if k in MAIN_ROWS else "baseline" for k in order], cls="results")
            info = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
            where = str(path.relative_to(r.path))
            if r.private:  # file names and the paths a tool recorded may name a patient
                info = redact(info, data_path=True)
                where = f"result {r.results.index((path, data)) + 1}"
            parts.append(f"<h3>{html.escape(r.name)}: {html.escape(where)}</h3>"
                         f'<p class="note">{_fmt(info)}</p>{table}')
    return "".join(parts) or ('<p class="note">No *.metrics.json (reconstruction or restoration results) in the '
                              "run folders.</p>")


def checkpoints_section(runs: list[Run]) -> str:
    rows = [[r.name, name, step if step >= 0 else "unreadable", round(size / 2**20, 2)]
            for r in runs for name, step, size in r.checkpoints]
    return _table(["run", "checkpoint", "step", "MiB"], rows, cls="checkpoints") if rows else \
        '<p class="note">No checkpoints.</p>'


SECTIONS = [("overview", "Runs"), ("config", "Config"), ("curves", "Training curves"),
            ("samples", "Samples over training"), ("metrics", "Metrics"),
            ("results", "Reconstruction and restoration results"), ("checkpoints", "Checkpoints")]


def build_html(runs: list[Run], max_sample_steps: int = 12, max_clips: int = 4) -> str:
    bodies = {"config": config_section(runs), "curves": curves_section(runs),
              "samples": samples_section(runs, max_sample_steps, max_clips), "metrics": metrics_section(runs),
              "results": results_section(runs), "checkpoints": checkpoints_section(runs)}
    bodies["overview"] = overview(runs) + skipped_notes(runs)  # after the sections that find damaged files
    title = "Report: " + ", ".join(r.name for r in runs)
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    nav = " · ".join(f'<a href="#{k}">{t}</a>' for k, t in SECTIONS)
    body = "".join(f'<section id="{k}"><h2>{t}</h2>{bodies[k]}</section>' for k, t in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="note">Made {made} from the run folders; self-contained (no network needed).</p>'
            f"<nav>{nav}</nav>{body}</body></html>")


def write_html(runs: list[Run], out: Path, **kwargs) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_html(runs, **kwargs), encoding="utf-8")
    return out
