"""Matplotlib figures of a run's curves, as PNG bytes; resume and preemption events are vertical lines."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display on compute nodes; the figures go into the page as PNG
import matplotlib.pyplot as plt  # noqa: E402

from .run import Run  # noqa: E402

EVENT_STYLE = {"resume": ("tab:green", "--", "resumed"), "preempted": ("tab:red", ":", "preempted"),
               "error": ("black", "-.", "stopped by an error")}
DPI = 80


def plain(text: str) -> str:
    """``text`` as matplotlib draws it literally: a run named ``a$x$`` is not mathtext (which could fail)."""
    return str(text).replace("$", r"\$")


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _mark_events(ax, runs: list[Run]) -> None:
    seen = set()
    for run in runs:
        for ev in run.events:
            style = EVENT_STYLE.get(ev["event"])
            if style is None:
                continue
            colour, ls, label = style
            # a preemption and its resume share a step: the dotted line is drawn wider, on top
            wide = ev["event"] == "preempted"
            ax.axvline(ev["step"], color=colour, ls=ls, lw=2.4 if wide else 1.2, zorder=3 if wide else 2,
                       label=None if label in seen else label)
            seen.add(label)


def _finite(steps, values):
    pairs = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curve(runs: list[Run], keys: list[str], title: str, ylabel: str, log_y: bool = False) -> bytes | None:
    """One axes: every ``key`` (a logged name, or a prefix ending in ``*``) of every run against step."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    drawn = 0
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(runs):
        if run.log is None:
            continue
        colour = f"C{i % 10}"
        names = [n for k in keys for n in sorted(run.log.series)
                 if (n.startswith(k[:-1]) if k.endswith("*") else n == k)]
        for j, name in enumerate(dict.fromkeys(names)):
            steps, values = _finite(*run.log.series[name])
            if not steps:
                continue
            label = plain(name if len(runs) == 1 else f"{run.name}: {name}")
            ax.plot(steps, values, color=colour, ls=styles[j % len(styles)], marker="o" if len(steps) < 8 else None,
                    ms=3, lw=1.4, label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    _mark_events(ax, runs)
    if log_y and all(v > 0 for line in ax.get_lines() for v in line.get_ydata() if isinstance(v, float)):
        ax.set_yscale("log")
    ax.set(title=plain(title), xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return png(fig)


def buckets(run: Run) -> bytes | None:
    """Validation loss per noise-level bucket (0: least noise) of one run against step."""
    if run.log is None:
        return None
    names = sorted((n for n in run.log.series if n.startswith("val/loss_bucket")),
                   key=lambda n: int(n.rsplit("bucket", 1)[1]))
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    cmap = plt.get_cmap("viridis")
    for k, name in enumerate(names):
        steps, values = _finite(*run.log.series[name])
        ax.plot(steps, values, color=cmap(k / max(1, len(names) - 1)), marker="o" if len(steps) < 8 else None,
                ms=3, label=f"bucket {k}")
    _mark_events(ax, [run])
    ax.set(title=plain(f"{run.name}: validation loss per noise-level bucket (0 = least noise)"), xlabel="step",
           ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return png(fig)


def domain_metrics(runs: list[Run], names: list[str]) -> bytes | None:
    """One small axes per domain metric (``val/<name>``), all runs overlaid."""
    if not names:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for i, run in enumerate(runs):
            if run.log and name in run.log.series:
                steps, values = _finite(*run.log.series[name])
                ax.plot(steps, values, color=f"C{i % 10}", marker="o", ms=3, label=plain(run.name))
        _mark_events(ax, runs)
        ax.set(title=plain(name), xlabel="step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)
