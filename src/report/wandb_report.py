"""The report as a W&B report (``wandb-workspaces``), for runs uploaded with ``wandb sync``.

It shows the same things as the HTML page, but from the server's copy of each run: line plots of the logged
curves, media browsers of the logged samples, and markdown for the config differences, events and results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ReportError
from .page import MAIN_ROWS, _numeric_rows, domain_metric_names
from .run import Run, config_differences

if TYPE_CHECKING:
    import wandb_workspaces.reports.v2 as wr

# what SampleCallback logs per media kind (the media writers' to_wandb keys under "samples/ema")
MEDIA_KEYS = {"image": ["samples/ema"], "audio": ["samples/ema/audio", "samples/ema/spectrogram"],
              "mri": ["samples/ema"]}


def parse_target(target: str) -> tuple[str, str]:
    parts = target.split("/")
    if len(parts) != 2 or not all(parts):
        raise ReportError(f"--wandb {target!r} must be ENTITY/PROJECT (for example my-team/diffusion).")
    return parts[0], parts[1]


def _keys(runs: list[Run], prefix: str, default: list[str]) -> list[str]:
    found = sorted({k for r in runs if r.log for k in r.log.series if k.startswith(prefix)})
    return found or default


def runset(runs: list[Run], entity: str, project: str, name: str) -> wr.Runset:
    import wandb_workspaces.reports.v2 as wr  # optional heavy dependency: wandb-workspaces
    from wandb_workspaces import expr  # optional heavy dependency: wandb-workspaces

    return wr.Runset(entity=entity, project=project, name=name,
                     filters=[expr.Metric("ID").isin([r.wandb_id for r in runs])])


def _markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def overview_markdown(runs: list[Run]) -> str:
    text = [_markdown_table(["run", "domain", "W&B run id"], [[r.name, r.domain, r.wandb_id] for r in runs])]
    events = [f"- {r.name}: {e['event']} at step {e['step']}" for r in runs for e in r.events
              if e["event"] in ("resume", "preempted", "error")]
    if events:
        text.append("Resume and preemption events (the curves continue in the same W&B run):\n" + "\n".join(events))
    diff = config_differences(runs) if len(runs) > 1 else {}
    if diff:
        text.append("Config differences:\n\n" + _markdown_table(["key", *[r.name for r in runs]],
                                                                 [[k, *v] for k, v in diff.items()]))
    return "\n\n".join(text)


def results_markdown(runs: list[Run]) -> str | None:
    parts = []
    for r in runs:
        for path, data in r.results:
            rows = _numeric_rows(data) if isinstance(data, dict) else {}
            if rows:
                cols = list(dict.fromkeys(m for sub in rows.values() for m in sub))
                table = [[k + ("" if k in MAIN_ROWS else " (baseline)"), *[rows[k].get(c, "-") for c in cols]]
                         for k in rows]
                heading = f"**{r.name}: {path.relative_to(r.path)}**"
                parts.append(heading + "\n\n" + _markdown_table(["method", *cols], table))
    return "\n\n".join(parts) or None


def build_report(runs: list[Run], target: str, title: str | None = None) -> wr.Report:
    """The report object (not saved): blocks, panels, keys and run filters for ``runs``."""
    import wandb_workspaces.reports.v2 as wr  # optional heavy dependency: wandb-workspaces

    entity, project = parse_target(target)
    for r in runs:
        if not r.wandb_id:
            raise ReportError(f"{r.path} has no W&B run id (wandb/run-id): it was trained with logger=none or "
                              "before run ids were kept; leave it out of --wandb or train it with logger=wandb.")
    everything = runset(runs, entity, project, "these runs")
    buckets = sorted(_keys(runs, "val/loss_bucket", []), key=lambda k: int(k.rsplit("bucket", 1)[1]))
    curves = [wr.LinePlot(title="training and validation loss", x="Step", y=["train/loss", "val/loss"], log_y=True),
              wr.LinePlot(title="learning rate", x="Step", y=_keys(runs, "lr-", ["lr-AdamW"])),
              wr.LinePlot(title="gradient norm", x="Step", y=["train/grad_norm"], log_y=True),
              wr.LinePlot(title="throughput (samples/s)", x="Step", y=["perf/samples_per_sec"])]
    if buckets:
        curves.insert(1, wr.LinePlot(title="validation loss per noise-level bucket (0 = least noise)", x="Step",
                                     y=buckets))
    curves += [wr.LinePlot(title=name, x="Step", y=[name]) for name in domain_metric_names(runs)]
    blocks: list = [wr.H1(text="Runs"), wr.MarkdownBlock(text=overview_markdown(runs)),
                    wr.H1(text="Training curves"), wr.PanelGrid(runsets=[everything], panels=curves),
                    wr.H1(text="Samples over training")]
    for domain in dict.fromkeys(r.domain for r in runs):
        members = [r for r in runs if r.domain == domain]
        keys = MEDIA_KEYS.get(members[0].media.get("kind", domain), ["samples/ema"])
        blocks += [wr.H2(text=f"{domain} samples"),
                   wr.PanelGrid(runsets=[runset(members, entity, project, f"{domain} runs")],
                                panels=[wr.MediaBrowser(title=f"{key} over training", media_keys=[key],
                                                        gallery_axis="step") for key in keys])]
    results = results_markdown(runs)
    if results:
        blocks += [wr.H1(text="Reconstruction and restoration results"), wr.MarkdownBlock(text=results)]
    return wr.Report(entity=entity, project=project, title=title or "Report: " + ", ".join(r.name for r in runs),
                     description="Curves, samples and results of the runs; the same content as "
                                 "`python -m src.report` writes as a self-contained page.", blocks=blocks)


def save_report(report: wr.Report) -> str:
    """Save on the W&B server; a server that cannot be reached or refuses is a one-line ReportError."""
    import requests  # optional heavy dependency: wandb (and its requests)
    import wandb  # optional heavy dependency: wandb

    try:
        wandb.Api()  # the report API resolves its run sets through it; without a login it has no server
    except wandb.errors.UsageError:
        raise ReportError(f"Not logged in to W&B, so no report can be saved to {report.entity}/{report.project}; "
                          "run `wandb login` (the HTML page needs no login).") from None
    try:
        report.save()
    except (wandb.errors.Error, requests.exceptions.RequestException) as e:
        raise ReportError(f"The W&B report could not be saved to {report.entity}/{report.project} ({e}); run "
                          "`wandb login`, upload the runs with `wandb sync RUN_DIR/wandb/offline-run-*`, "
                          "and try again.") from None
    return report.url
