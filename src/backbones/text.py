"""Text encoders for ``cond=text``: captions -> per-token embeddings (the backbone's cross-attention context)
and one pooled embedding per caption (added to the noise-level embedding).

``builtin``: a small transformer over UTF-8 bytes, trained together with the diffusion model; it needs no
files (written here: no library ships a byte-level encoder meant to be trained from scratch inside another
model). ``clip`` / ``t5``: a Hugging Face ``transformers`` folder on disk (never the network), frozen, its weights
kept out of the checkpoints (the checkpoint names the folder) and its embeddings optionally cached per caption.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from src.errors import ConfigError

log = logging.getLogger(__name__)

ENCODERS = ("builtin", "clip", "t5")
# config.json's model_type that each pretrained encoder accepts
MODEL_TYPES = {"clip": ("clip", "clip_text_model"), "t5": ("t5",)}
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.ckpt", "pytorch_model.bin.index.json", "tf_model.h5",
                  "flax_model.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


class Truncation:
    """States once per encoder that captions longer than its limit are cut (never the captions themselves:
    they may carry patient data)."""

    def __init__(self, limit: int, unit: str):
        self.limit, self.unit, self.told = limit, unit, False

    def check(self, lengths: list[int]) -> None:
        long = sum(n > self.limit for n in lengths)
        if long and not self.told:
            self.told = True
            log.warning("%d of %d captions are longer than %d %s and are cut to that length (the text encoder's "
                        "limit, cond.max_length); this is said once.", long, len(lengths), self.limit, self.unit)


# ---- builtin: bytes ------------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as ids 1..256 after a start id (257, whose output is the pooled embedding); 0 pads."""

    PAD, START, VOCAB = 0, 257, 258

    def __init__(self, max_length: int):
        self.max_length = int(max_length)
        self.truncation = Truncation(self.max_length, "bytes")

    def __call__(self, captions: list[str], device) -> dict:
        data = [list(c.encode("utf-8")) for c in captions]
        self.truncation.check([len(b) for b in data])
        data = [b[: self.max_length] for b in data]
        length = 1 + max((len(b) for b in data), default=0)
        ids = torch.zeros(len(data), length, dtype=torch.long)
        for i, b in enumerate(data):
            ids[i, 0] = self.START
            ids[i, 1:1 + len(b)] = torch.tensor(b, dtype=torch.long) + 1
        ids = ids.to(device)
        return {"ids": ids, "mask": ids != self.PAD}


class BuiltinTextEncoder(nn.Module):
    """A pre-norm transformer over byte ids; the start token's output is the pooled embedding."""

    def __init__(self, dim: int = 128, layers: int = 2, heads: int = 4, max_length: int = 64):
        super().__init__()
        self.dim = int(dim)
        self.embed = nn.Embedding(ByteTokenizer.VOCAB, self.dim)
        self.pos = nn.Parameter(torch.randn(int(max_length) + 1, self.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(self.dim, int(heads), 4 * self.dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, int(layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        h = h * mask[..., None].to(h.dtype)  # padding contributes nothing to the cross-attention values
        return h, h[:, 0]


# ---- clip / t5: a local Hugging Face folder ---------------------------------------------------------------
def check_encoder_folder(kind: str, path) -> Path:
    """The folder of a pretrained text encoder, checked before anything is loaded: one sentence otherwise."""
    if not path:
        raise ConfigError(f"cond.encoder={kind} needs cond.encoder_path=DIR, a local Hugging Face folder "
                          "(config.json, tokenizer files, model.safetensors); nothing is downloaded.")
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"cond.encoder_path={folder} is not a folder; pass a local Hugging Face {kind} folder "
                          "(config.json, tokenizer files, model.safetensors).")
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"cond.encoder_path={folder} is incomplete: it has no config.json; save the encoder "
                          "with save_pretrained (model and tokenizer) into that folder.")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{config} cannot be read as a JSON object ({e}); save the encoder again.") from None
    if model_type not in MODEL_TYPES[kind]:
        raise ConfigError(f"cond.encoder_path={folder} holds a '{model_type}' model, which cond.encoder={kind} "
                          f"does not support (model_type {' or '.join(MODEL_TYPES[kind])}); pass a {kind} "
                          "folder or set cond.encoder to the matching encoder.")
    safe = [p for p in ("model.safetensors", "model.safetensors.index.json") if (folder / p).is_file()]
    if not safe:
        unsafe = [p for p in PICKLE_WEIGHTS if (folder / p).is_file()]
        if unsafe:
            raise ConfigError(f"cond.encoder_path={folder} holds its weights only as {unsafe[0]}, a pickle that "
                              "can run code when loaded; convert them to model.safetensors (save_pretrained "
                              "with safe_serialization=True) and pass that folder.")
        raise ConfigError(f"cond.encoder_path={folder} is incomplete: it has no model.safetensors; save the "
                          "encoder's weights there with save_pretrained.")
    if not any((folder / p).is_file() for p in TOKENIZER_FILES):
        raise ConfigError(f"cond.encoder_path={folder} is incomplete: it has no tokenizer files "
                          f"({', '.join(TOKENIZER_FILES)}); save the tokenizer there with save_pretrained.")
    return folder


class PretrainedTextEncoder:
    """A frozen CLIP or T5 text encoder read from a local folder. Deliberately not an ``nn.Module`` attribute of
    the model: its weights stay out of checkpoints and the EMA, and the optimizer never sees them."""

    def __init__(self, kind: str, path, max_length: int = 77, cache: bool = True):
        # transformers: an optional heavy dependency, imported only for clip/t5
        import transformers

        folder = check_encoder_folder(kind, path)
        transformers.utils.logging.disable_progress_bar()  # one bar per load would fill the run's log
        model_cls = transformers.CLIPTextModel if kind == "clip" else transformers.T5EncoderModel
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = model_cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"The {kind} text encoder in {folder} could not be loaded "
                              f"({str(e).splitlines()[0][:200]}); save model and tokenizer there again with "
                              "save_pretrained.") from None
        self.kind, self.folder = kind, folder
        self.model.eval().requires_grad_(False)
        cfg = self.model.config
        self.dim = int(cfg.hidden_size if kind == "clip" else cfg.d_model)
        limit = int(getattr(cfg, "max_position_embeddings", 0) or 0) if kind == "clip" else 0
        self.max_length = min(int(max_length), limit) if limit else int(max_length)
        self.truncation = Truncation(self.max_length, "tokens")
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def set_precision(self, precision: str) -> None:
        """The run's precision (``bf16-mixed``, ``16-mixed``, ``32-true``, ...) for the frozen weights."""
        p = str(precision)
        dtype = torch.bfloat16 if p.startswith("bf16") else torch.float16 if p.startswith("16") else torch.float32
        self.model.to(dtype=dtype)
        if self.cache:
            self.cache.clear()

    @torch.no_grad()
    def _encode(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        self.truncation.check([len(ids) for ids in self.tokenizer(captions)["input_ids"]])
        tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        if next(self.model.parameters()).device != torch.device(device):
            self.model.to(device)
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        out = self.model(input_ids=ids, attention_mask=mask)
        context = out.last_hidden_state.float()
        if self.kind == "clip":
            pooled = out.pooler_output.float()
        else:  # T5 has no pooled output: the mean over the caption's tokens
            m = mask[..., None].float()
            pooled = (context * m).sum(1) / m.sum(1).clamp(min=1)
        return context, pooled

    def __call__(self, captions: list[str], device) -> dict:
        if self.cache is None:
            context, pooled = self._encode(captions, device)
            return {"context": context, "pooled": pooled}
        missing = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if missing:
            context, pooled = self._encode(missing, device)
            for i, c in enumerate(missing):
                self.cache[c] = (context[i].cpu(), pooled[i].cpu())
        return {"context": torch.stack([self.cache[c][0] for c in captions]).to(device),
                "pooled": torch.stack([self.cache[c][1] for c in captions]).to(device)}


# ---- the model side ------------------------------------------------------------------------------------------
class TextConditioned(nn.Module):
    """A backbone that takes text: ``forward(x, noise_level, cond=None, text=...)``, where ``text`` is what
    ``build_text``'s input function returns (byte ids for the built-in encoder, which lives here so that the
    EMA, the optimizer and the checkpoints cover it; embeddings for a frozen one)."""

    def __init__(self, net: nn.Module, encoder: BuiltinTextEncoder | None):
        super().__init__()
        self.net, self.encoder = net, encoder
        self.size_multiple = getattr(net, "size_multiple", 1)
        # a frozen encoder's embeddings of the empty caption (set_null): what a call without text uses
        self.register_buffer("null_context", None, persistent=False)
        self.register_buffer("null_pooled", None, persistent=False)

    def set_null(self, text: dict) -> None:
        self.null_context, self.null_pooled = text["context"][:1].detach(), text["pooled"][:1].detach()

    def null_text(self, n: int, device) -> dict:
        """The empty caption for ``n`` samples: tools that know nothing of text (restoration, anomaly maps)
        then use the model unconditionally."""
        if self.encoder is not None:
            ids = torch.full((n, 1), ByteTokenizer.START, dtype=torch.long, device=device)
            return {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)}
        return {"context": self.null_context.expand(n, -1, -1), "pooled": self.null_pooled.expand(n, -1)}

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None,
                text: dict | None = None):
        if text is None:
            text = self.null_text(x.shape[0], x.device)
        if "ids" in text:
            context, pooled = self.encoder(text["ids"], text["mask"])
        else:
            context, pooled = text["context"], text["pooled"]
        return self.net(x, noise_level, cond, context=context, pooled=pooled)


def check_text_cond(c: dict) -> dict:
    """``cond`` of a text-conditional model, checked: one sentence per bad key."""
    enc = c.get("encoder", "builtin")
    if enc not in ENCODERS:
        raise ConfigError(f"cond.encoder must be one of {', '.join(ENCODERS)}; got '{enc}'.")
    for key in ("max_length", "dim", "layers", "heads"):
        v = c.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"cond.{key} must be a whole number >= 1; got {v!r}.")
    if enc == "builtin" and int(c.get("dim") or 128) % int(c.get("heads") or 4):
        raise ConfigError(f"cond.dim={c.get('dim')} must be a multiple of cond.heads={c.get('heads')}.")
    if enc != "builtin":
        check_encoder_folder(enc, c.get("encoder_path"))
    return c


def build_text(c: dict):
    """``(text input function, trainable encoder or None, context width)`` for a text-conditional model."""
    enc, max_length = c.get("encoder", "builtin"), int(c.get("max_length") or 64)
    if enc == "builtin":
        encoder = BuiltinTextEncoder(int(c.get("dim") or 128), int(c.get("layers") or 2), int(c.get("heads") or 4),
                                     max_length)
        return ByteTokenizer(max_length), encoder, encoder.dim
    frozen = PretrainedTextEncoder(enc, c.get("encoder_path"), max_length, bool(c.get("cache", True)))
    return frozen, None, frozen.dim
