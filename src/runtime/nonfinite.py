"""Non-finite training steps: detected on every rank, skipped together, and the run stopped when they persist.

``optim.nonfinite=stop`` (the default) stops at the first non-finite loss or gradient; ``skip`` drops that step's
update and goes on, until more than ``optim.nonfinite_max_skips`` steps in a row were dropped. The checkpoints then
hold the last finite weights and ``src.train`` exits with its own status (``src.options.EXIT_NONFINITE``).
"""

from __future__ import annotations

import logging

import torch

from src.conditioning import unpack
from src.errors import ConfigError

log = logging.getLogger(__name__)


def nonfinite_data(batch) -> str | None:
    """When the training batch itself holds NaN or Inf: which items (file names when the batch carries them
    under ``path``), else None (the optimisation, not the data, went non-finite)."""
    if batch is None:
        return None
    x = unpack(batch)[0]
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    bad = (~torch.isfinite(x.detach().reshape(x.shape[0], -1))).any(dim=1)
    if not bool(bad.any()):
        return None
    rows = [int(i) for i in torch.nonzero(bad).flatten()]
    names = batch.get("path") if isinstance(batch, dict) else None
    if isinstance(names, (list, tuple)) and len(names) == x.shape[0]:
        return "the training data holds non-finite values: " + ", ".join(str(names[i]) for i in rows[:5])
    return f"the training batch holds non-finite values in {len(rows)} of its {x.shape[0]} items"


class NonfiniteGuard:
    """One per training module: ``add_loss`` for each micro-batch (a tensor flag, no host sync), ``finite`` once
    per optimizer step (the ranks agree, so all skip or stop together), then ``record`` with the outcome."""

    def __init__(self, mode: str = "stop", max_skips: int = 10):
        if mode not in ("stop", "skip"):
            raise ConfigError(f"optim.nonfinite must be stop or skip; got '{mode}'.")
        self.mode, self.max_skips = mode, int(max_skips)
        self.loss_finite: torch.Tensor | None = None  # every loss of the current accumulation window finite
        self.consecutive = 0
        self.stopped: dict | None = None  # {"step", "data"} once the run stops itself

    def add_loss(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self.loss_finite = finite if self.loss_finite is None else self.loss_finite & finite

    def finite(self, params, trainer=None) -> bool:
        """The losses added since the last call and the gradients of ``params`` finite on every rank."""
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params if p.grad is not None]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
        if self.loss_finite is not None:
            finite = finite & self.loss_finite.to(finite.device)
        self.loss_finite = None
        bad = not bool(finite)
        if trainer is not None:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        return not bad

    def record(self, ok: bool, step: int, trainer=None, batch=None) -> bool:
        """Count a finite or dropped step; log a dropped one and stop the run past the limit. True: it stopped."""
        if ok:
            self.consecutive = 0
            return False
        self.consecutive += 1
        stop = self.mode == "stop" or self.consecutive > self.max_skips
        if trainer is None or trainer.is_global_zero:
            if stop:
                log.error("Non-finite loss or gradient at step %d (%d consecutive): update skipped, stopping "
                          "the run; the checkpoints hold the last finite weights (lower optim.lr, or set "
                          "optim.nonfinite=skip).", step, self.consecutive)
            else:
                log.warning("Non-finite loss or gradient at step %d: update skipped (%d consecutive, "
                            "optim.nonfinite_max_skips=%d).", step, self.consecutive, self.max_skips)
        if stop and trainer is not None:
            self.stopped = {"step": step, "data": nonfinite_data(batch)}
            trainer.should_stop = True
        return stop
