"""Class labels and captions between the batches, the backbone and the samplers.

``cond`` config: ``num_classes`` (0: no class labels; the label ``num_classes`` itself is the null, dropped one),
``drop_prob`` (labels or captions dropped in training so one model samples with and without them), ``classes``
(the names), and ``kind=text`` for captions (src/backbones/text.py builds their encoder). Guidance is
src/diffusion/guidance.py's; here the backbone call gets its labels or text bound, so objectives and samplers
keep seeing ``net(x, noise_level, cond)``.
"""

from __future__ import annotations

import torch

from src.backbones.text import check_text_cond
from src.diffusion.guidance import guided
from src.errors import ConfigError

# backbones with a text path (a context_dim argument and context=/pooled= in forward)
TEXT_BACKBONES = ("unet", "diffwave", "unet1d")


def unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, cond)`` of a batch given as a dict (``x``, ``cond``), a tuple or a bare tensor."""
    if isinstance(batch, dict):
        return batch["x"], batch.get("cond")
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def check_cond(cond: dict | None) -> dict:
    c = {"num_classes": 0, "drop_prob": 0.1, "classes": None, **(cond or {})}
    n = c["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"cond.num_classes must be a whole number >= 0 (0: unconditional); got {n!r}.")
    if not 0.0 <= float(c["drop_prob"]) < 1.0:
        raise ConfigError(f"cond.drop_prob must be in [0, 1); got {c['drop_prob']}.")
    if c["classes"] is not None and len(c["classes"]) != n:
        raise ConfigError(f"cond.classes names {len(c['classes'])} classes but cond.num_classes is {n}.")
    if c.get("kind") == "text":
        if n:
            raise ConfigError("cond=text and class labels (cond.num_classes) cannot be combined; use one of them.")
        check_text_cond(c)
    return c


def check_text_backbone(backbone: dict) -> None:
    if backbone.get("name", "unet") not in TEXT_BACKBONES:
        names = f"{', '.join(TEXT_BACKBONES[:-1])} or {TEXT_BACKBONES[-1]}"
        raise ConfigError(f"cond=text needs backbone.name {names} (cross-attention to the text); "
                          f"backbone.name={backbone.get('name')} takes no text.")


def with_label(net, label: torch.Tensor | None):
    """The backbone call ``net(x, noise_level, cond)`` that objectives make, with class labels bound."""
    if label is None:
        return net
    return lambda x, noise_level, cond=None: net(x, noise_level, cond, label=label)


def with_text(net, text: dict | None):
    """The backbone call with text embeddings (or byte ids) bound, as ``with_label`` for class labels."""
    if text is None:
        return net
    return lambda x, noise_level, cond=None: net(x, noise_level, cond, text=text)


def batch_labels(batch, num_classes: int, device, check: bool = True) -> torch.Tensor:
    """``batch["label"]`` as a long tensor on ``device``; ``check``: refuse labels outside 0..num_classes-1."""
    label = batch.get("label") if isinstance(batch, dict) else None
    if label is None:
        raise ConfigError("cond.num_classes is set but the batches carry no 'label'; use a datamodule that "
                          "reads labels (cond=class) or set cond.num_classes=0.")
    label = torch.as_tensor(label, device=device).long()
    if check and (label.min() < 0 or label.max() >= num_classes):
        raise ConfigError(f"A batch holds label {int(label.max())} outside 0..{num_classes - 1} "
                          "(cond.num_classes); check the label map of the data.")
    return label


def batch_captions(batch) -> list[str]:
    captions = batch.get("caption") if isinstance(batch, dict) else None
    if captions is None:
        raise ConfigError("cond=text but the batches carry no 'caption'; use a datamodule that reads captions "
                          "(datamodule.captions=sidecar|csv|datalist, or captioned shards).")
    return [str(c) for c in captions]


def check_sample_request(num: int, num_classes: int, has_text: bool, label, text, device) -> torch.Tensor | None:
    """A sampling call's labels (as a long tensor) or prompts checked against what the model was trained with."""
    if text is not None and not has_text:
        raise ConfigError("prompt= needs a text-conditional checkpoint (trained with cond=text); this one "
                          "is not: drop prompt= (or use label= for a class-conditional one).")
    if text is not None and len(text) != num:
        raise ConfigError(f"Got {len(text)} prompts for {num} samples; pass one per sample.")
    if label is None:
        return None
    if not num_classes:
        raise ConfigError("label= needs a class-conditional checkpoint (trained with cond=class); this one "
                          "is unconditional.")
    label = torch.as_tensor(label, device=device).long().reshape(-1)
    if label.numel() != num:
        raise ConfigError(f"Got {label.numel()} labels for {num} samples; pass one per sample.")
    if label.min() < 0 or label.max() >= num_classes:
        raise ConfigError(f"label must be in 0..{num_classes - 1} for this checkpoint; "
                          f"got {int(label.max() if label.max() >= num_classes else label.min())}.")
    return label


def _repeat(c, reps: int):
    """The other condition (``cond``) of a batch that guidance doubled."""
    return c if c is None or reps == 1 else torch.cat([c] * reps)


def label_denoiser(objective, net, c, n: int, num_classes: int, label: torch.Tensor | None, guidance: float,
                   device=None):
    """The denoiser of a class-conditional model for ``n`` samples: ``label`` (None: the null label, no
    guidance) with classifier-free ``guidance``."""
    if label is None:
        label, guidance = torch.full((n,), num_classes, device=device, dtype=torch.long), 1.0

    def cond_denoiser(x, sigma, lab):
        return objective.denoiser(with_label(net, lab), _repeat(c, x.shape[0] // n))(x, sigma)

    return guided(cond_denoiser, label, num_classes, guidance)


def text_denoiser(objective, net, c, n: int, text: dict | None, null: dict, guidance: float):
    """The denoiser of a text-conditional model: encoded prompts ``text`` (None: the empty caption ``null``,
    no guidance) with classifier-free ``guidance``."""
    if text is None:
        return objective.denoiser(with_text(net, null), c)

    def cond_denoiser(x, sigma, t):
        return objective.denoiser(with_text(net, t), _repeat(c, x.shape[0] // n))(x, sigma)

    return guided(cond_denoiser, text, null, guidance)
