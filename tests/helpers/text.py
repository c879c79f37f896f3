"""Tiny text encoders with random weights, saved by ``save_pretrained`` (no network), and captioned data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHARS = "abcdefghijklmnopqrstuvwxyz"


def tiny_t5(folder: Path) -> Path:
    """A 1-layer T5 encoder (d_model 32) with the byte-level ByT5 tokenizer, which needs no vocabulary file."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(cfg).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def tiny_clip(folder: Path) -> Path:
    """A 1-layer CLIP text model (width 32) with a CLIP BPE tokenizer over letters (a vocabulary written here)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    CLIPTextModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def captioned_digits(root: Path, digits=(0, 1), per: int = 6, size: int = 16, csv: bool = False) -> Path:
    """PNG digits (scikit-learn) with a sidecar caption each ("the digit one"), or a captions.csv instead."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file,caption"]
    for digit in digits:
        for k, i in enumerate(np.flatnonzero(d.target == digit)[:per]):
            name = f"d{digit}_{k}.png"
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((size, size)).save(root / name)
            if csv:
                rows.append(f"{name},the digit {DIGIT_WORDS[digit]}")
            else:
                (root / f"d{digit}_{k}.txt").write_text(f"the digit {DIGIT_WORDS[digit]}\n")
    if csv:
        (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root
