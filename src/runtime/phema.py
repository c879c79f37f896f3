"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models").

During training two power-function EMA profiles of the weights are kept (``ema.phema.std``, relative
standard deviations sigma_rel of the averaging profile) and snapshots of both are written every
``ema.phema.snapshot_every`` steps to ``RUN/checkpoints/phema/``. Afterwards, an EMA of any other
sigma_rel is the least-squares combination of the stored snapshots whose averaging profile is closest to
the wanted one (the profiles' inner products are closed-form):

    python -m src.phema RUN_DIR --sigma-rel 0.05,0.10,0.15 --out DIR [--step T]

writes ``DIR/phema-0.150.ckpt`` ..., ordinary checkpoints whose EMA weights are the reconstruction
(``python -m src.sample ckpt=DIR/phema-0.150.ckpt ...`` samples them). Time is counted in optimizer steps.
The command line is ``src/phema.py``; this module holds the maths, the averages kept during training, their
snapshots and the reconstruction.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from src.checkpoint import CheckpointError, load_checkpoint, nonfinite_tensors, read_checkpoint_file
from src.errors import ConfigError
from src.fileio import atomic_write

from .ema import _local, _reshard

log = logging.getLogger(__name__)
SNAPSHOT_DIR = "phema"
SNAPSHOT_RE = re.compile(r"^phema-(\d+)\.pt$")


# ---- closed-form maths of power-function averaging profiles (EDM2, Appendix C) ----------------------------
def std_to_exp(std) -> np.ndarray:
    """Exponent gamma of the profile t^gamma with relative std ``std``: the largest real root of
    gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0."""
    std = np.asarray(std, dtype=np.float64)
    out = [np.roots([1, 7, 16 - s**-2, 12 - s**-2]).real.max() for s in std.reshape(-1)]
    return np.asarray(out).reshape(std.shape)


def exp_to_std(exp) -> np.ndarray:
    exp = np.asarray(exp, dtype=np.float64)
    return np.sqrt((exp + 1) / (exp + 2) ** 2 / (exp + 3))


def profile_inner_products(a_t, a_std, b_t, b_std) -> np.ndarray:
    """<p_a, p_b> for profiles p(tau) = (g + 1) tau^g / t^(g + 1) on [0, t] (broadcasting)."""
    a_g, b_g = std_to_exp(a_std), std_to_exp(b_std)
    a_t, b_t = np.asarray(a_t, np.float64), np.asarray(b_t, np.float64)
    ratio = a_t / b_t
    exp = np.where(a_t < b_t, b_g, -a_g)
    return (a_g + 1) * (b_g + 1) * ratio**exp / ((a_g + b_g + 1) * np.maximum(a_t, b_t))


def solve_coefficients(in_t, in_std, out_t, out_std) -> np.ndarray:
    """Least-squares weights ``(n_in, n_out)`` of stored profiles for each wanted profile, columns summing to 1."""
    col = lambda v: np.asarray(v, np.float64).reshape(-1, 1)  # noqa: E731
    row = lambda v: np.asarray(v, np.float64).reshape(1, -1)  # noqa: E731
    gram = profile_inner_products(col(in_t), col(in_std), row(in_t), row(in_std))
    rhs = profile_inner_products(col(in_t), col(in_std), row(out_t), row(out_std))
    x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return x / x.sum(axis=0, keepdims=True)


def power_beta(gamma: float, t: int) -> float:
    """Decay of the update that brings the EMA with profile exponent ``gamma`` from step t - 1 to t
    (t >= 1; 0 at t = 1, a copy): the weight of step tau then follows tau^gamma."""
    return (1 - 1 / t) ** (gamma + 1)


# ---- the averages kept during training -------------------------------------------------------------------
class PowerFunctionEMA(nn.Module):
    """One frozen copy of the network per sigma_rel, each a power-function EMA of the training weights.

    Registered in the LightningModule, so the averages are in (and resume from) every checkpoint; updates are
    elementwise on each rank's own shard, as for ``src.ema.EMA``.
    """

    def __init__(self, model: nn.Module, std=(0.05, 0.10), snapshot_every: int = 1000):
        super().__init__()
        std = [float(s) for s in (std if isinstance(std, (list, tuple)) else [std])]
        if not std or any(not 0 < s < 0.28 for s in std):  # sigma_rel -> 0.2887 as gamma -> 0 (a plain mean)
            raise ConfigError(f"ema.phema.std must be a list of relative widths in (0, 0.28); got {std}.")
        if int(snapshot_every) < 1:
            raise ConfigError(f"ema.phema.snapshot_every must be a whole number >= 1; got {snapshot_every}.")
        self.std = std
        self.gammas = [float(g) for g in std_to_exp(std)]
        self.snapshot_every = int(snapshot_every)
        self.emas = nn.ModuleList(copy.deepcopy(model).requires_grad_(False) for _ in std)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._n: int | None = 0  # host-side mirror of num_updates, so updates never sync with the GPU

    @property
    def updates(self) -> int:
        if self._n is None:
            self._n = int(self.num_updates.item())
        return self._n

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._n = None  # re-read the restored counter on next use

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        t = self.updates + 1
        params = [_local(p).detach() for p in model.parameters()]
        for gamma, ema in zip(self.gammas, self.emas):
            _reshard(ema)
            ema_params = [_local(p) for p in ema.parameters()]
            torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)],
                                 1.0 - power_beta(gamma, t))
            for e, b in zip(ema.buffers(), model.buffers()):
                _local(e).copy_(_local(b))
        self.num_updates.add_(1)
        self._n = t

    def full_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each profile's weights as whole CPU tensors (under FSDP2 a collective: every rank must call it)."""
        out = []
        for ema in self.emas:
            sd = {}
            for k, v in ema.state_dict().items():
                v = v.full_tensor() if hasattr(v, "full_tensor") else v
                sd[k] = v.detach().cpu().clone()
            out.append(sd)
        return out


def atomic_save(obj, path: Path) -> None:
    """Temporary file, fsync, rename (as the checkpoints are written): a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class PHEMASnapshots(pl.Callback):
    """Every ``snapshot_every`` optimizer steps: ``checkpoints/phema/phema-STEP.pt`` with both profiles."""

    def __init__(self, checkpoint_dir: str | Path):
        self.dir = Path(checkpoint_dir) / SNAPSHOT_DIR

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        phema = getattr(module, "phema", None)
        step = trainer.global_step
        if phema is None or step == 0 or step % phema.snapshot_every or getattr(self, "_last", None) == step:
            return
        self._last = step  # gradient accumulation ends several batches on the same step
        state = phema.full_state_dicts()
        if trainer.is_global_zero:
            atomic_save({"step": phema.updates, "std": list(phema.std), "state_dicts": state},
                        self.dir / f"phema-{step:07d}.pt")


# ---- reconstruction ------------------------------------------------------------------------------------------
def list_snapshots(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a folder; pass the paths.output_dir of a training run.")
    folder = run_dir / "checkpoints" / SNAPSHOT_DIR
    snaps = sorted(p for p in folder.glob("phema-*.pt") if SNAPSHOT_RE.match(p.name)) if folder.is_dir() else []
    if not snaps:
        raise CheckpointError(f"No post-hoc EMA snapshots in {folder}; train with "
                              "'ema.phema={std:[0.05,0.10],snapshot_every:500}' to write them.")
    return snaps


def reconstruct(snapshots: list[dict], sigma_rel: list[float], step: int | None = None):
    """``{sigma_rel: state_dict}`` at ``step`` (default: the last snapshot) from the snapshots' profiles."""
    usable = [s for s in snapshots if step is None or s["step"] <= step]
    if not usable:
        raise ConfigError(f"--step {step} is before the first snapshot (step {snapshots[0]['step']}).")
    t_out = step if step is not None else max(s["step"] for s in usable)
    in_t = [s["step"] for s in usable for _ in s["std"]]
    in_std = [std for s in usable for std in s["std"]]
    dicts = [sd for s in usable for sd in s["state_dicts"]]
    coeffs = solve_coefficients(in_t, in_std, [t_out] * len(sigma_rel), sigma_rel)
    out = {}
    for j, target in enumerate(sigma_rel):
        sd = {}
        for key, ref in dicts[0].items():
            if ref.is_floating_point():
                acc = torch.zeros_like(ref, dtype=torch.float64)
                for c, d in zip(coeffs[:, j], dicts):
                    acc += float(c) * d[key].double()
                sd[key] = acc.to(ref.dtype)
            else:  # integer buffers (counters): the newest snapshot's
                sd[key] = dicts[-1][key].clone()
        out[target] = sd
    return out, t_out


def check_snapshot(path: Path, snap: dict, reference: dict) -> None:
    """A snapshot whose weights are not finite, or whose tensors do not have the shapes of ``reference``
    (``last.ckpt``'s EMA weights), would make every reconstruction garbage: refused, naming the file."""
    for sd in snap["state_dicts"]:
        bad = nonfinite_tensors(sd)
        if bad:
            raise CheckpointError(f"Snapshot {path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                                  "move it out of the phema folder (or pass --step before it) and run again.")
        for key, value in sd.items():
            ref = reference.get(f"ema.module.{key}")
            if ref is not None and tuple(value.shape) != tuple(ref.shape):
                raise CheckpointError(f"Snapshot {path} holds {key} of shape {tuple(value.shape)}, but the model's "
                                      f"is {tuple(ref.shape)}; the snapshots and last.ckpt come from different "
                                      "models: move the foreign snapshots out of the phema folder.")


def write_checkpoints(run_dir: Path, sigma_rel: list[float], out_dir: Path, step: int | None = None) -> list[Path]:
    paths_in = list_snapshots(run_dir)
    snaps = [read_checkpoint_file(p) for p in paths_in]
    template_path = run_dir / "checkpoints" / "last.ckpt"
    template = load_checkpoint(template_path)
    for path, snap in zip(paths_in, snaps):
        if step is None or snap["step"] <= step:
            check_snapshot(path, snap, template["state_dict"])
    recon, t_out = reconstruct(snaps, sigma_rel, step)
    hp = copy.deepcopy(template["hyper_parameters"])
    hp["ema"] = {k: v for k, v in (hp.get("ema") or {}).items() if k != "phema"}  # the output has no profiles
    state = {k: v for k, v in template["state_dict"].items() if not k.startswith("phema.")}
    paths = []
    for target, sd in recon.items():
        weights = dict(state)
        for k, v in sd.items():
            key = f"ema.module.{k}"
            if key not in weights:
                raise CheckpointError(f"Snapshot key {k} is not in {template_path}'s EMA weights; the snapshots "
                                      "and last.ckpt come from different models.")
            weights[key] = v
        ckpt = {"state_dict": weights, "hyper_parameters": hp, "global_step": t_out,
                "run_config": template.get("run_config"),
                "phema": {"sigma_rel": target, "step": t_out, "snapshots": len(snaps)}}
        path = out_dir / f"phema-{target:.3f}.ckpt"
        bad = nonfinite_tensors(weights)
        if bad:  # a solve that overflowed: nothing is written rather than a checkpoint that samples black
            raise CheckpointError(f"The reconstruction for sigma_rel {target:g} has non-finite weights (e.g. "
                                  f"{bad[0]}); nothing was written to {path}.")
        atomic_save(ckpt, path)
        paths.append(path)
    return paths
