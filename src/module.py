"""DiffusionModule: the one LightningModule for every domain.

It knows a backbone (``backbone(x, noise_level, cond)``), an objective (noise process, parametrisation,
loss weighting) and a sampler; it knows nothing about images, sound or anatomy. Batches are dicts with
``x`` shaped ``(B, C, *spatial)`` and an optional ``cond``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch

from .backbones import build_backbone
from .backbones.lora import add_lora, check_lora, lora_state
from .backbones.pretrained import file_sha256, load_pretrained
from .backbones.text import TextConditioned, build_text
from .checkpoint import CheckpointError
from .conditioning import (
    batch_captions,
    batch_labels,
    check_cond,
    check_sample_request,
    check_text_backbone,
    label_denoiser,
    text_denoiser,
    unpack,
    with_label,
    with_text,
)
from .diffusion import build_objective, clipped, get_sampler
from .diffusion.guidance import drop_captions, drop_labels
from .errors import ConfigError
from .runtime.ema import EMA
from .runtime.nonfinite import NonfiniteGuard
from .runtime.phema import PowerFunctionEMA

log = logging.getLogger(__name__)
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant to decorrelate (seed, step, rank, micro-batch) streams


def step_seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * _MIX + int(p) + 1) % (2**63 - 1)
    return h


def channels_last_format(data_ndim: int) -> torch.memory_format | None:
    """channels-last layout for 2-D (``(C, H, W)``) and 3-D (``(C, D, H, W)``) data; none for 1-D."""
    return {3: torch.channels_last, 4: torch.channels_last_3d}.get(data_ndim)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class DiffusionModule(pl.LightningModule):
    def __init__(self, backbone: dict, diffusion: dict, data_shape: list[int], optim: dict | None = None,
                 ema: dict | None = None, seed: int = 0, val_buckets: int = 5, perf: dict | None = None,
                 cond: dict | None = None, init: dict | None = None, finetune: dict | None = None):
        """``init``: a pretrained start (``src.backbones.pretrained.describe``'s record plus ``init.*``), loaded
        here; ``finetune.lora``: adapters on the frozen backbone (checkpoints then hold only the adapters)."""
        super().__init__()
        # logger=False: src.train logs them itself, redacted (paths, class names under privacy)
        self.save_hyperparameters(logger=False)
        # class conditioning: labels 0..num_classes-1, and num_classes itself as the null (dropped) label
        self.cond_cfg = check_cond(cond)
        self.num_classes = self.cond_cfg["num_classes"]
        if self.num_classes:
            backbone = {**backbone, "num_classes": self.num_classes}
        # text conditioning: captions -> text_input (byte ids, or a frozen encoder's embeddings) -> the backbone
        self.has_text = self.cond_cfg.get("kind") == "text"
        text_encoder = None
        if self.has_text:
            check_text_backbone(backbone)
            self.text_input, text_encoder, context_dim = build_text(self.cond_cfg)
            backbone = {**backbone, "context_dim": context_dim}
        self.optim_cfg = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_steps": 0,
                          "min_lr_ratio": 0.1, "fused": None, "total_steps": None,
                          "nonfinite": "stop", "nonfinite_max_skips": 10, **(optim or {})}
        self.guard = NonfiniteGuard(self.optim_cfg["nonfinite"], self.optim_cfg["nonfinite_max_skips"])
        self._skip_step = False  # this optimizer step's update was dropped (non-finite): no EMA update either
        self._last_batch = None
        self.diffusion_cfg = dict(diffusion)
        self.data_shape = list(data_shape)
        self.seed = seed
        self.val_buckets = val_buckets
        self.objective = build_objective(diffusion)
        self.backbone = build_backbone(backbone)
        self.lora = check_lora((finetune or {}).get("lora"))
        self.init_report = None
        if init and init.get("from"):
            if self.lora and init.get("sha256") and file_sha256(init["file"]) != init["sha256"]:
                raise CheckpointError(f"The LoRA adapters were trained on {init['file']} with sha256 "
                                      f"{init['sha256'][:12]}, but that file has changed; put the original base "
                                      "model back at that path.")
            self.init_report = load_pretrained(self.backbone, init)
        self.lora_counts = None
        if self.lora and self.has_text:
            raise ConfigError("finetune.lora with cond=text is not supported yet (the text path would train "
                              "outside the adapters); fine-tune every weight (drop finetune.lora.rank).")
        if self.lora:
            self.lora_counts = add_lora(self.backbone, self.lora)
            self.strict_loading = False  # checkpoints hold the adapters; the frozen base comes from init.from
        if self.has_text:  # the built-in encoder trains inside the backbone, so EMA and checkpoints cover it
            self.backbone = TextConditioned(self.backbone, text_encoder)
            if text_encoder is None:
                self.backbone.set_null(self.encode_text([""]))
        self.perf = {"compile": False, "channels_last": False, **(perf or {})}
        self.memory_format = channels_last_format(len(self.data_shape)) if self.perf["channels_last"] else None
        if self.memory_format is not None:
            self.backbone.to(memory_format=self.memory_format)
        ema = dict(ema or {})
        phema = ema.pop("phema", None)
        self.ema = EMA(self.backbone, **ema)
        # post-hoc EMA (src/runtime/phema.py): power-function profiles whose snapshots let any EMA length be rebuilt
        self.phema = None
        if phema:
            self.phema = PowerFunctionEMA(self.backbone, **phema)
        if self.perf["compile"]:
            # in-place Module.compile keeps state_dict keys free of `_orig_mod.`, so checkpoints load either way
            self.backbone.compile()
            self.ema.module.compile()

    # ---- training ---------------------------------------------------------------------------------
    def _generator(self, *parts: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(step_seed(self.seed, *parts))
        return g

    def _noise(self, x: torch.Tensor, g: torch.Generator):
        u = torch.rand(x.shape[0], generator=g, device=x.device)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return u, noise

    def forward(self, x, noise_level, cond=None):
        return self.backbone(x, noise_level, cond)

    def configure_model(self):
        # A sharding strategy (trainer=fsdp) shards the backbone and its EMA copy into the same units, so
        # each rank's EMA shard lines up with its weight shard; other strategies have no shard_module.
        strategy = self._trainer.strategy if self._trainer is not None else None
        shard_module = getattr(strategy, "shard_module", None)
        if shard_module is not None:
            shard_module(self.backbone, trainable=True)
            shard_module(self.ema.module, trainable=False)
            for copy_ in self.phema.emas if self.phema is not None else []:
                shard_module(copy_, trainable=False)

    def prepare_input(self, x: torch.Tensor, *parts: int) -> torch.Tensor:
        """The data as the backbone sees it; a latent model (src/latent) encodes it here."""
        return x

    def training_step(self, batch, batch_idx):
        self._last_batch = batch  # a reference only: read when a step turns out non-finite
        x, cond = unpack(batch)
        accum = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        # noise, and the global RNG (dropout and the like), are pure functions of (seed, step, rank,
        # micro-batch): resuming replays them exactly without storing per-rank RNG states
        parts = (self.global_step, self.global_rank, batch_idx % accum)
        x = self.prepare_input(x, *parts)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        torch.manual_seed(step_seed(self.seed, *parts, 1))
        g = self._generator(*parts)
        u, noise = self._noise(x, g)
        label = self._labels(batch)
        if label is not None:
            label = drop_labels(label, self.num_classes, float(self.cond_cfg["drop_prob"]), g)
        text = None
        if self.has_text:
            text = self.encode_text(drop_captions(self._captions(batch), float(self.cond_cfg["drop_prob"]), g))
        loss = self.diffusion_loss(self.backbone, x, u, noise, cond, label, text).mean()
        self.guard.add_loss(loss)  # a tensor flag, no host sync per micro-batch
        # the all-reduce (and its host sync) only where the value is written: on the logger's steps (Lightning's
        # sync_dist must not change between calls, so the mean over ranks is taken here)
        logged = loss.detach()
        if self._trainer is not None and self.trainer.world_size > 1 and self._on_logging_step():
            logged = self.trainer.strategy.reduce(logged, reduce_op="mean")
        self.log("train/loss", logged, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def conditioned(self, net, label=None, text: dict | None = None):
        """``net(x, noise_level, cond)`` with this batch's class labels or encoded captions bound."""
        return with_text(net, text) if text is not None else with_label(net, label)

    def diffusion_loss(self, net, x, u, noise, cond, label=None, text: dict | None = None) -> torch.Tensor:
        """Per-sample training loss of ``net`` (the backbone, or its EMA copy in validation) with the batch's
        labels or encoded captions; a later stage (``src/distill``) replaces it with its own."""
        return self.objective.loss(self.conditioned(net, label, text), x, u, noise, cond)

    def _on_logging_step(self) -> bool:
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    @property
    def nonfinite_stop(self) -> dict | None:
        """``{"step", "data"}`` once the run stopped itself on non-finite values (src.train reports it)."""
        return self.guard.stopped

    def _labels(self, batch) -> torch.Tensor | None:
        """``batch["label"]`` for a class-conditional model (None otherwise: labels are then ignored)."""
        if not self.num_classes:
            return None
        # the range check syncs with an accelerator: there, only on the first batch
        check = self.device.type == "cpu" or not getattr(self, "_labels_checked", False)
        self._labels_checked = True
        return batch_labels(batch, self.num_classes, self.device, check)

    def _captions(self, batch) -> list[str]:
        return batch_captions(batch)

    def encode_text(self, captions: list[str]) -> dict:
        """Captions as the text-conditional backbone takes them (the empty caption is the unconditional one)."""
        return self.text_input(list(captions), self.device)

    def setup(self, stage: str) -> None:
        # a frozen text encoder runs in the run's precision (bf16 halves its memory); it is no submodule
        if self.has_text and hasattr(self.text_input, "set_precision") and self._trainer is not None:
            self.text_input.set_precision(self.trainer.precision)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # called once per optimizer step (after gradient accumulation), never per micro-batch
        if self._skip_step:
            self._skip_step = False
            return
        self.ema.update(self.backbone)
        if self.phema is not None:
            self.phema.update(self.backbone)

    def on_before_optimizer_step(self, optimizer):
        self._log_grad_norm()
        self._guard_nonfinite(optimizer)

    def _log_grad_norm(self):
        # only on the steps the logger writes: under FSDP2 the norm is a collective over all ranks
        if not self._on_logging_step():
            return
        grads = [p.grad for p in self.backbone.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            if hasattr(norm, "full_tensor"):  # sharded (FSDP2) gradients: the norm over all ranks' shards
                norm = norm.full_tensor()
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def _guard_nonfinite(self, optimizer):
        """A non-finite loss or gradient on any rank: every rank drops this step's gradients (AdamW then
        leaves weights and moments alone) and the EMA update; ``optim.nonfinite`` says skip or stop."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.guard.finite(params, self._trainer):
            self.guard.record(True, self.global_step + 1)
            return
        for p in params:
            p.grad = None
        self._skip_step = True
        # the step being taken, as the checkpoints count it
        self.guard.record(False, self.global_step + 1, self._trainer, self._last_batch)

    # ---- validation: loss per noise-level bucket, on the EMA weights --------------------------------
    def validation_step(self, batch, batch_idx):
        x, cond = unpack(batch)
        x = self.prepare_input(x, 10**6, batch_idx, self.global_rank)
        g = self._generator(10**6, batch_idx, self.global_rank)
        losses = []
        for k in range(self.val_buckets):
            u_center = (k + 0.5) / self.val_buckets  # bucket k = k-th quantile band of the training density
            _, noise = self._noise(x, g)
            u = torch.full((x.shape[0],), u_center, device=x.device)
            text = self.encode_text(self._captions(batch)) if self.has_text else None
            loss = self.diffusion_loss(self.ema.module, x, u, noise, cond, self._labels(batch), text).mean()
            self.log(f"val/loss_bucket{k}", loss, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
            losses.append(loss)
        self.log("val/loss", torch.stack(losses).mean(), on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=x.shape[0])

    # ---- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.optim_cfg
        kwargs: dict[str, Any] = dict(lr=c["lr"], weight_decay=c["weight_decay"], betas=tuple(c["betas"]))
        if c.get("fused") is not None:
            kwargs["fused"] = bool(c["fused"])
        opt = torch.optim.AdamW([p for p in self.backbone.parameters() if p.requires_grad], **kwargs)
        # optim.total_steps pins the schedule's length when a run is stopped early on purpose (tests, staging)
        total = c.get("total_steps") or (self.trainer.max_steps if self.trainer.max_steps > 0 else 10**9)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, int(c["warmup_steps"]), total, float(c["min_lr_ratio"])))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
               cond: torch.Tensor | None = None, use_ema: bool = True, batch_size: int | None = None,
               shape: tuple[int, ...] | list[int] | None = None, label: torch.Tensor | None = None,
               guidance: float = 1.0, text: list[str] | None = None, progress=None, **options) -> torch.Tensor:
        """Draw ``num`` samples shaped ``(num, *data_shape)`` with the EMA weights by default.

        ``shape`` replaces ``data_shape`` for fully convolutional backbones (e.g. a whole file's length for a
        vocoder); ``cond`` holds one condition per sample. A class-conditional model takes ``label`` (one class
        per sample; None: unconditional, the null label) and classifier-free ``guidance`` (1: plain conditional);
        a text-conditional one takes ``text``, one prompt per sample (None: unconditional, the empty caption).
        """
        label = check_sample_request(num, self.num_classes, self.has_text, label, text, self.device)
        d = self.diffusion_cfg
        sampler = sampler or d.get("sampler") or self.objective.default_sampler
        steps = int(steps or d.get("steps", 32))
        opts = {**(d.get("sampler_options") or {}), **options}
        if progress is not None:  # called after every sampler step (src.runtime.progress.Progress)
            opts["callback"] = progress
        fn = get_sampler(sampler)
        net = self.ema.module if use_ema else self.backbone
        was_training = net.training
        net.eval()
        sigmas = self.objective.sampling_sigmas(steps)
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        bs = batch_size or num
        for start in range(0, num, bs):
            n = min(bs, num - start)
            c = cond[start:start + n] if cond is not None else None
            if self.has_text:
                den = self._text_denoiser(net, c, None if text is None else text[start:start + n], n, guidance)
            else:
                den = self._denoiser(net, c, None if label is None else label[start:start + n], n, guidance)
            if d.get("clip_denoised") is not None:
                lo, hi = d["clip_denoised"]
                den = clipped(den, lo, hi)
            x = torch.randn((n, *(shape or self.data_shape)), generator=g, device=self.device) * sigmas[0].item()
            out.append(fn(den, x, sigmas, generator=g, **opts))
        net.train(was_training)
        return torch.cat(out)

    def sampling_steps(self, steps: int | None = None) -> int:
        """Sampler steps of one draw (``steps``, else ``diffusion.steps``): what a progress bar counts."""
        return len(self.objective.sampling_sigmas(int(steps or self.diffusion_cfg.get("steps", 32)))) - 1

    def _denoiser(self, net, c, label, n: int, guidance: float):
        if not self.num_classes:
            return self.objective.denoiser(net, c)
        return label_denoiser(self.objective, net, c, n, self.num_classes, label, guidance, self.device)

    def _text_denoiser(self, net, c, text: list[str] | None, n: int, guidance: float):
        return text_denoiser(self.objective, net, c, n, None if text is None else self.encode_text(text),
                             self.encode_text([""] * n), guidance)

    # ---- LoRA: checkpoints hold only the adapters ------------------------------------------------------------
    def checkpoint_state(self, state: dict) -> dict:
        """What a checkpoint of this module keeps of ``state``: all of it, or without the frozen base (LoRA)."""
        return lora_state(state, ("backbone.", "ema.module.", "phema.")) if self.lora else state

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if not self.lora:
            return
        checkpoint["state_dict"] = kept = self.checkpoint_state(checkpoint["state_dict"])
        if not getattr(self, "_adapter_size_logged", False) and self._trainer is not None \
                and self.trainer.is_global_zero:
            self._adapter_size_logged = True
            size = sum(v.numel() * v.element_size() for v in kept.values() if hasattr(v, "numel"))
            log.info("LoRA checkpoints hold only the adapters (weights and EMA): %d tensors, %.2f MB; the base is "
                     "%s (sha256 %s).", len(kept), size / 2**20, self.hparams["init"]["file"],
                     str(self.hparams["init"].get("sha256"))[:12])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        theirs = (checkpoint.get("hyper_parameters") or {}).get("init") or {}
        ours = self.hparams.get("init") or {}
        if self.lora and theirs.get("sha256") != ours.get("sha256"):
            raise CheckpointError(f"This LoRA checkpoint's adapters belong to base {theirs.get('file')} (sha256 "
                                  f"{str(theirs.get('sha256'))[:12]}), but init.from is {ours.get('file')} (sha256 "
                                  f"{str(ours.get('sha256'))[:12]}); pass the same init.from to resume.")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())
