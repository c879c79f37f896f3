"""One restoration from files to files: the library behind ``python -m src.restore``.

    from src.tools.restoration.workflow import RestoreOptions, restore_file
    summary = restore_file(RestoreOptions(checkpoint="last.ckpt", task="inpaint", input="photo.png",
                                          output="fixed.png", mask="scratches.png"))

Writes OUT, OUT.input.EXT and OUT.<baseline>.EXT, and OUT.metrics.json when there is a reference; prints what
it did and returns the summary. For tensors in memory use ``Restorer`` with a ``Problem``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import src.tools.restoration.audio as audio  # the modules, not the package (whose __init__ imports this file)
import src.tools.restoration.image as image
from src.errors import ConfigError
from src.fileio import kind_of, sibling, write_json
from src.options import COUNT, ETA, SEED, Number, Whole, check_fields

from ..prior import Prior
from .problem import TASKS
from .restorer import Restorer

ALL_TASKS = ("inpaint", "super-resolution", "denoise", "declip", "bandwidth")


@dataclass
class RestoreOptions:
    """Everything one restoration needs; the defaults are those of ``python -m src.restore``."""

    checkpoint: str | Path                 # unconditional image or audio model
    task: str                              # one of ALL_TASKS (image: inpaint, super-resolution, denoise;
                                           # audio: denoise, declip, bandwidth)
    input: str | Path                      # PNG/JPEG/TIFF image or WAV/FLAC/OGG recording
    output: str | Path                     # the restored file, same kind as the input
    reference: str | Path | None = None    # the clean original: writes OUT.metrics.json
    simulate: bool = False                 # input is clean: damage it first and score against it
    mask: str | Path | None = None         # inpaint: PNG of the input's size, white where pixels are missing
    mask_boxes: list[list[int]] | None = None  # inpaint: missing rectangles [x, y, w, h] in pixels
    scale: int = 4                         # super-resolution factor
    noise_std: float | None = None         # denoise: noise std as a share of full scale (None: estimated)
    clip_level: float | None = None        # declip: level the recording clips at (full scale = 1)
    cutoff: float | None = None            # bandwidth: Hz above which the recording holds nothing
    steps: int | None = None               # sampler steps (None: the model's diffusion.steps)
    eta: float = 0.85                      # DDIM noise, 0 = deterministic
    seed: int = 0                          # of the sampler and of the simulated damage
    batch_size: int = 16                   # tiles per network call
    overlap: float = 0.25                  # share of a tile overlapping its neighbour
    device: str = "auto"
    use_ema: bool = True
    progress: bool = True


# what each numeric option accepts: checked here for the Python API and by the CLI's flags (src.restore)
KINDS = {
    "mask_boxes": Whole(0, none_ok=True),
    "scale": Whole(2, 16),
    "noise_std": Number(0.0, 1.0, low_open=True, none_ok=True),
    "clip_level": Number(0.0, 1.0, low_open=True, none_ok=True),
    "cutoff": Number(0.0, low_open=True, none_ok=True),
    "steps": Whole(1, none_ok=True),
    "eta": ETA,
    "seed": SEED,
    "batch_size": COUNT,
    "overlap": Number(0.0, 0.9),
}


def check_paths(opts: RestoreOptions) -> None:
    check_fields(opts, KINDS)
    out = Path(opts.output).expanduser().resolve()
    for what, other in (("--input", opts.input), ("--reference", opts.reference), ("--checkpoint", opts.checkpoint),
                        ("--mask", opts.mask)):
        if other and Path(other).expanduser().resolve() == out:
            raise ConfigError(f"--output {out} is the same file as {what}; inputs are never overwritten, choose "
                              "another output name.")


def prepare_job(opts: RestoreOptions, prior: Prior):
    """The image or audio job (problem, baseline, writer, metrics) of ``opts`` for ``prior``'s domain."""
    common = dict(task=opts.task, input=opts.input, reference=opts.reference, simulate=opts.simulate,
                  noise_std=opts.noise_std, seed=opts.seed)
    if prior.domain == "image":
        return image.prepare(prior, mask=opts.mask, mask_boxes=opts.mask_boxes, scale=opts.scale, **common)
    return audio.prepare(prior, clip_level=opts.clip_level, cutoff=opts.cutoff, **common)


def restore_file(opts: RestoreOptions) -> dict:
    """Restore ``opts.input`` into ``opts.output`` (see the module docstring); returns the summary."""
    check_paths(opts)
    prior = Prior.from_checkpoint(opts.checkpoint, ("image", "audio"), "restoration", opts.device,
                                  use_ema=opts.use_ema)
    domain = prior.domain
    if opts.task not in TASKS[domain]:
        other = next((d for d, tasks in TASKS.items() if opts.task in tasks), None)
        if other is None:
            raise ConfigError(f"Unknown task '{opts.task}'; choose one of {', '.join(ALL_TASKS)}.")
        raise ConfigError(f"--task {opts.task} restores {other} but checkpoint {opts.checkpoint} is a {domain} "
                          f"model; pass a {other} checkpoint, or one of the {domain} tasks: "
                          f"{', '.join(TASKS[domain])}.")
    for what, path in (("--input", opts.input), ("--output", opts.output)):
        if kind_of(path) != domain:
            raise ConfigError(f"{what} {path} is not {'an image' if domain == 'image' else 'a sound'} file, but "
                              f"checkpoint {opts.checkpoint} is a {domain} model; pass a "
                              f"{'.png' if domain == 'image' else '.wav'} file.")
    restorer = Restorer(prior, steps=opts.steps, eta=opts.eta, batch_size=opts.batch_size, overlap=opts.overlap)
    job = prepare_job(opts, prior)
    for note in job.notes:
        print(f"note: {note}", file=sys.stderr)
    t0 = time.perf_counter()
    result = job.from_model(restorer.restore(job.problem, seed=opts.seed, progress=opts.progress))
    seconds = time.perf_counter() - t0
    baseline = job.baseline()
    written = job.write(opts.output, result, baseline)
    summary = {"task": opts.task, "domain": domain, "checkpoint": str(opts.checkpoint), "steps": restorer.steps,
               "eta": restorer.eta, "seed": opts.seed, "seconds": round(seconds, 2),
               "shape": list(result.shape), "baseline": baseline[0], "notes": job.notes}
    if opts.task == "denoise":
        summary["noise_std"] = round(float(job.noise_std), 6)
    if job.reference is not None:
        summary["reference"] = "the --reference file" if opts.reference else "the clean --input (--simulate)"
        summary["metrics"] = job.metrics(result, baseline)
        written.append(write_json(summary, sibling(opts.output, "metrics", ".json")))
    print(f"restored {opts.input} ({opts.task}, {restorer.steps} steps) in {seconds:.1f} s")
    for key, m in (summary.get("metrics") or {}).items():
        print(f"  {key:<12} " + "   ".join(f"{k} {v:.4f}" for k, v in m.items()))
    for path in written:
        print(f"wrote {path}")
    return summary
