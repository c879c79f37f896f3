"""Low-rank adapters on a backbone (``finetune.lora.rank=R``) through peft, base weights frozen.

Targets are named by kind (``attention``: the linear layers of attention blocks; ``conv``: every 1/2/3-D
convolution) or by a regular expression over module names; a list that matches nothing is refused.
A checkpoint of a LoRA run keeps only the adapters (``is_adapter_key``); the base comes from ``init.from``.
"""

from __future__ import annotations

import re

from torch import nn

from src.errors import ConfigError, positive_int

KINDS = ("attention", "conv")
_ATTENTION = re.compile(r"(^|\.)(attn\d*|attentions?)(\.|$)")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_lora(lora: dict | None) -> dict | None:
    """The ``finetune.lora`` config with defaults, or None when LoRA is off (rank 0 or unset)."""
    lora = {"rank": 0, "alpha": None, "dropout": 0.0, "targets": ["attention"], **(lora or {})}
    if not lora["rank"]:
        return None
    rank = positive_int(lora["rank"], "finetune.lora.rank")
    targets = lora["targets"]
    targets = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets or [])
    if not targets:
        raise ConfigError("finetune.lora.targets is empty; name attention, conv or a regular expression over "
                          "module names.")
    for t in targets:
        try:
            re.compile(t)
        except re.error as e:
            raise ConfigError(f"finetune.lora.targets entry '{t}' is not a regular expression ({e}); use "
                              "attention, conv or a valid pattern.") from None
    return {"rank": rank, "alpha": float(lora["alpha"] or rank), "dropout": float(lora["dropout"] or 0.0),
            "targets": targets}


def target_modules(backbone: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the layers that get adapters (peft supports Linear and 1/2/3-D convolutions)."""
    names = []
    for name, m in backbone.named_modules():
        if not isinstance(m, (nn.Linear, *_CONV)) or ".lora_" in name:
            continue
        for t in targets:
            if (t == "attention" and isinstance(m, nn.Linear) and _ATTENTION.search(name)) or \
                    (t == "conv" and isinstance(m, _CONV)) or (t not in KINDS and re.search(t, name)):
                names.append(name)
                break
    return names


def add_lora(backbone: nn.Module, lora: dict) -> dict:
    """Inject adapters into ``backbone`` in place and freeze everything else; returns the counts."""
    from peft import LoraConfig, inject_adapter_in_model  # optional heavy dependency: peft

    names = target_modules(backbone, lora["targets"])
    if not names:
        kinds = sorted({type(m).__name__ for m in backbone.modules() if isinstance(m, (nn.Linear, *_CONV))})
        raise ConfigError(f"finetune.lora.targets={','.join(lora['targets'])} matches no layer of this backbone "
                          f"(it has {', '.join(kinds) or 'no'} layers; attention needs attention blocks); name "
                          "attention, conv or a pattern over its module names.")
    total = sum(p.numel() for p in backbone.parameters())
    config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules="(" + "|".join(re.escape(n) for n in names) + ")", bias="none")
    backbone.requires_grad_(False)
    inject_adapter_in_model(config, backbone)
    for name, p in backbone.named_parameters():
        p.requires_grad_(is_adapter_key(name))
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    return {"layers": len(names), "trainable": trainable, "base": total}


def is_adapter_key(name: str) -> bool:
    return ".lora_" in name


def lora_state(state: dict, prefixes: tuple[str, ...]) -> dict:
    """``state`` without the frozen base weights under ``prefixes`` (what a LoRA checkpoint keeps)."""
    return {k: v for k, v in state.items() if not k.startswith(prefixes) or is_adapter_key(k)}
