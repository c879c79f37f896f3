"""Stage 1 of latent diffusion: the AutoencoderModule trains MONAI's AutoencoderKL on the domain's data.

Loss: L1 reconstruction + KL (+ perceptual with local weights) (+ a PatchDiscriminator's adversarial loss
after ``loss.adversarial_warmup_steps``, with its own optimizer). Manual optimization: the discriminator's
step goes through the strategy without counting as a training step, so ``global_step`` (checkpoints,
``max_steps``, the data position on resume) counts autoencoder updates, as for a diffusion run.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from monai.losses import PatchAdversarialLoss
from monai.metrics import PSNRMetric, SSIMMetric
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.fsdp import register_fsdp_forward_method

from src.conditioning import unpack
from src.errors import ConfigError
from src.module import step_seed, warmup_cosine
from src.runtime.ema import EMA
from src.runtime.nonfinite import NonfiniteGuard

from .networks import (
    autoencoder_kwargs,
    build_autoencoder,
    build_discriminator,
    build_perceptual,
    kl_divergence,
    latent_shape,
)
from .waveform import multi_resolution_stft_loss

log = logging.getLogger(__name__)
# checkpoints hold the weights after the step's update, as with automatic optimization: what resume needs
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# the discriminator's schedule follows the step from the start, also while its warm-up keeps it from stepping
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")

LOSS_DEFAULTS = {"l1_weight": 1.0, "kl_weight": 1e-6, "adversarial_weight": 0.0, "adversarial_warmup_steps": 1000,
                 "perceptual_weight": 0.0, "perceptual_network": None, "perceptual_slices": False,
                 "stft_weight": 1.0}  # stft: the multi-resolution STFT loss of the waveform (audio) autoencoder


class AutoencoderModule(pl.LightningModule):
    def __init__(self, autoencoder: dict, data_shape: list[int], loss: dict | None = None,
                 discriminator: dict | None = None, optim: dict | None = None, ema: dict | None = None,
                 seed: int = 0):
        super().__init__()
        # logger=False: src.train logs them itself, redacted (paths, class names under privacy)
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.data_shape = list(data_shape)
        # spatial dims and channels follow the data; the preset and any override come from the config
        self.arch = autoencoder_kwargs({"in_channels": data_shape[0], "spatial_dims": len(data_shape) - 1,
                                        **{k: v for k, v in autoencoder.items() if v is not None}})
        self.waveform = self.arch.get("kind") == "waveform"
        if self.waveform:  # clips shorter than the hop, or not a whole number of hops: one sentence before training
            latent_shape(self.arch, self.data_shape)
        self.loss_cfg = {**LOSS_DEFAULTS, **(loss or {})}
        unknown = sorted(set(self.loss_cfg) - set(LOSS_DEFAULTS))
        if unknown:
            raise ConfigError(f"Unknown loss option '{unknown[0]}'; known: {', '.join(LOSS_DEFAULTS)}.")
        self.optim_cfg = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_steps": 0,
                          "min_lr_ratio": 0.1, "total_steps": None, "grad_clip": 1.0, "nonfinite": "stop",
                          "nonfinite_max_skips": 10, **(optim or {})}
        self.guard = NonfiniteGuard(self.optim_cfg["nonfinite"], self.optim_cfg["nonfinite_max_skips"])
        self.seed = seed
        self.autoencoder = build_autoencoder(self.arch)
        ema = dict(ema or {})
        if ema.pop("phema", None):
            raise ConfigError("ema.phema (post-hoc EMA) is for diffusion runs; stage=autoencoder keeps one EMA "
                              "(ema.decay): drop ema.phema.")
        self.ema = EMA(self.autoencoder, **ema)
        dims = self.arch["spatial_dims"]
        self.discriminator = None
        if float(self.loss_cfg["adversarial_weight"]) > 0:
            self.discriminator = build_discriminator(dims, data_shape[0], **(discriminator or {}))
            self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        self.disc_cfg = dict(discriminator or {})
        # held outside the module tree: the frozen feature network is no part of checkpoints, DDP or FSDP
        self._perceptual: list = []
        if float(self.loss_cfg["perceptual_weight"]) > 0:
            self._perceptual.append(build_perceptual(self.loss_cfg["perceptual_network"], self.data_shape,
                                                     slices=bool(self.loss_cfg["perceptual_slices"])))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["autoencoder_arch"] = self.arch  # resolved: stage 2 rebuilds it even if the presets change

    # ---- training ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy) and self.discriminator is not None:
            # before DDP wraps the module: the discriminator is unused in warm-up and in the autoencoder's backward
            strategy._ddp_kwargs.setdefault("find_unused_parameters", True)

    def configure_model(self):
        # trainer=fsdp (FSDP2): the autoencoder and its EMA copy are cut into the same units (the encoder's and
        # decoder's blocks), so each rank's EMA shard lines up with its weight shard; the discriminator is
        # sharded on its own (one unit). Other strategies have no shard_module.
        shard_module = getattr(self._trainer.strategy if self._trainer is not None else None, "shard_module", None)
        if shard_module is None:
            return
        shard_module(self.autoencoder, trainable=True)
        shard_module(self.ema.module, trainable=False)
        for net in (self.autoencoder, self.ema.module):
            # validation and previews call reconstruct(), not forward(): FSDP2 must gather for it too
            register_fsdp_forward_method(net, "reconstruct")
        if self.discriminator is not None:
            shard_module(self.discriminator, trainable=True)

    def _adversarial_on(self) -> bool:
        return self.discriminator is not None and self.global_step >= int(self.loss_cfg["adversarial_warmup_steps"])

    def training_step(self, batch, batch_idx):
        x, _ = unpack(batch)
        c = self.loss_cfg
        opts = self.optimizers()
        opt_g, opt_d = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        scheds = self.lr_schedulers()
        scheds = scheds if isinstance(scheds, list) else [scheds]
        # the posterior sample is a pure function of (seed, step, rank): a resumed run replays it exactly
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank, 1))
        recon, z_mu, z_sigma = self.autoencoder(x)
        l1 = (recon.float() - x.float()).abs().mean()
        kl = kl_divergence(z_mu.float(), z_sigma.float())
        loss = c["l1_weight"] * l1 + c["kl_weight"] * kl
        logs = {"train/l1": l1, "train/kl": kl}
        if self.waveform and float(c["stft_weight"]) > 0:
            stft = multi_resolution_stft_loss(recon, x)
            loss = loss + float(c["stft_weight"]) * stft
            logs["train/stft"] = stft
        if self._perceptual:
            p = self.perceptual_distance(x.device)(recon.float(), x.float())
            loss = loss + c["perceptual_weight"] * p
            logs["train/perceptual"] = p
        adversarial = self._adversarial_on()
        if adversarial:
            g_adv = self.adversarial(self.discriminator(recon.contiguous().float())[-1], target_is_real=True,
                                     for_discriminator=False)
            loss = loss + c["adversarial_weight"] * g_adv
            logs["train/adv_g"] = g_adv
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        ok = self._finite(loss, self.autoencoder.parameters())
        if ok:
            self._clip(opt_g)
        else:
            opt_g.zero_grad(set_to_none=True)  # AdamW leaves weights and moments of grad-less params alone
        opt_g.step()  # always: the step (and with it the data position) advances even when the update is skipped
        if opt_d is not None:
            opt_d.zero_grad(set_to_none=True)  # the generator's backward reached the discriminator too
            if adversarial:
                real = self.discriminator(x.contiguous().float())[-1]
                fake = self.discriminator(recon.detach().contiguous().float())[-1]
                d_loss = 0.5 * (self.adversarial(fake, target_is_real=False, for_discriminator=True)
                                + self.adversarial(real, target_is_real=True, for_discriminator=True))
                self.manual_backward(d_loss)
                d_ok = self._finite(d_loss, self.discriminator.parameters())
                ok = ok and d_ok
                if d_ok:
                    self._clip(opt_d)
                    # not opt_d.step(): in manual optimization every LightningOptimizer step counts as a step
                    self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None, model=self)
                opt_d.zero_grad(set_to_none=True)
                logs["train/adv_d"] = d_loss
        for s in scheds:
            s.step()
        self._after_step(ok)
        self._log_train({"train/loss": loss, **logs}, x.shape[0])
        return loss.detach()

    def _log_train(self, logs: dict, batch_size: int) -> None:
        """The training values, as the mean over ranks on the logger's steps only: one all-reduce of them all
        there, none on the other steps (sync_dist stays False: Lightning refuses a change between calls)."""
        names = list(logs)
        values = torch.stack([logs[k].detach().float() for k in names])
        if self._trainer is not None and self.trainer.world_size > 1 and self._on_logging_step():
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        for name, value in zip(names, values):
            self.log(name, value, prog_bar=name == "train/loss", on_step=True, on_epoch=False,
                     batch_size=batch_size)

    def _on_logging_step(self) -> bool:
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    def perceptual_distance(self, device: torch.device):
        """The perceptual distance (loss.perceptual_network), moved to ``device`` on first use."""
        distance = self._perceptual[0]
        if next(iter(distance.net.parameters()), torch.empty(0, device=device)).device != device:
            distance.to(device)
        return distance

    def _clip(self, opt) -> None:
        clip = self.optim_cfg.get("grad_clip")
        if clip:
            self.clip_gradients(opt, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")

    @property
    def nonfinite_stop(self) -> dict | None:
        """``{"step", "data"}`` once the run stopped itself on non-finite values (src.train reports it)."""
        return self.guard.stopped

    def _finite(self, loss: torch.Tensor, params) -> bool:
        """Loss and gradients finite on every rank (ranks agree, so all skip or stop together)."""
        self.guard.add_loss(loss)
        return self.guard.finite(params, self._trainer)

    def _after_step(self, ok: bool) -> None:
        if ok:
            self.ema.update(self.autoencoder)
        self.guard.record(ok, self.global_step, self._trainer)

    # ---- validation: reconstructions of the EMA autoencoder ------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, use_ema: bool = True) -> torch.Tensor:
        net = self.ema.module if use_ema else self.autoencoder
        return net.reconstruct(x)  # decodes the posterior mean: deterministic

    def validation_step(self, batch, batch_idx):
        x, _ = unpack(batch)
        recon = self.reconstruct(x).float()
        a, b = ((recon.clamp(-1, 1) + 1) / 2), ((x.float() + 1) / 2)
        bs = x.shape[0]
        self.log("val/loss", (recon - x.float()).abs().mean(), on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=bs)
        self.log("val/psnr", PSNRMetric(max_val=1.0)(a, b).mean(), on_epoch=True, sync_dist=True, batch_size=bs)
        if self.waveform:
            self.log("val/mrstft", multi_resolution_stft_loss(recon, x), on_epoch=True, sync_dist=True, batch_size=bs)
        elif min(x.shape[2:]) >= 7:
            ssim = SSIMMetric(spatial_dims=x.ndim - 2, data_range=1.0, win_size=7)(a, b).mean()
            self.log("val/ssim", ssim, on_epoch=True, sync_dist=True, batch_size=bs)

    # ---- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.optim_cfg
        kwargs: dict[str, Any] = dict(lr=c["lr"], weight_decay=c["weight_decay"], betas=tuple(c["betas"]))
        total = c.get("total_steps") or (self.trainer.max_steps if self.trainer.max_steps > 0 else 10**9)

        def schedule(opt):
            return {"scheduler": torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: warmup_cosine(s, int(c["warmup_steps"]), total, float(c["min_lr_ratio"]))),
                "interval": "step"}

        opts = [torch.optim.AdamW(self.autoencoder.parameters(), **kwargs)]
        if self.discriminator is not None:
            lr = self.disc_cfg.get("lr") or c["lr"]
            opts.append(torch.optim.AdamW(self.discriminator.parameters(), **{**kwargs, "lr": lr}))
        return opts, [schedule(o) for o in opts]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.autoencoder.parameters())
