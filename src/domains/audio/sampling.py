"""``python -m src.sample ... mel_from=FILE.wav`` for vocoder checkpoints: resynthesise a file from its log-mel."""

from __future__ import annotations

from src.errors import ConfigError

from .data import mel_from_file


def sample_input(options: dict, run_config: dict, num: int, device: str, ckpt: str):
    """``(cond, shape)`` for ``mel_from=FILE``: the file's log-mel for every sample and the file's length."""
    dm = run_config.get("datamodule") or {}
    vocoder = bool(dm.get("mel_conditioning"))
    if options.get("mel_from") is None:
        if vocoder:
            print("note: this is a vocoder checkpoint; without mel_from=FILE.wav it samples unconditionally")
        return None, None
    if not vocoder:
        raise ConfigError(f"mel_from= needs an audio checkpoint trained with datamodule.mel_conditioning=true; "
                          f"{ckpt} was not: drop mel_from= or pass a vocoder checkpoint.")
    mel, length = mel_from_file(options["mel_from"], int(dm["sample_rate"]), int(dm["channels"]),
                                dm["normalize"], float(dm["peak_level"]), float(dm["target_lufs"]),
                                int(dm["n_mels"]), int(dm["hop_length"]))
    return mel.to(device).expand(num, *mel.shape), (int(dm["channels"]), length)
