"""Audio waveforms: a folder of wav/flac/ogg (recursive), webdataset shards of them, or the built-in sounds.

Clips are ``(channels, length)`` at ``sample_rate``: read with soundfile (only the frames a crop needs),
mixed to mono or stereo, resampled with ``torchaudio.functional.resample``, cropped (random for
training, centred for validation), zero-padded when the file is shorter, and normalised per clip (peak
or loudness) into [-1, 1]. With ``mel_conditioning`` a batch also carries the clip's log-mel as ``cond``.
Shards (``python -m datamodules.shards --domain audio``) hold each file's own bytes and decode through the
same ``read_clip``, so a shard item equals the folder item for that file.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
from torch.utils.data import Dataset

from datamodules.base import DiffusionDataModule, FileItems, Subset, probe_folder, split_indices
from src.env_check import import_torchaudio
from src.errors import DataError, fraction, positive_int

from .mel import LogMel
from .synth import SyntheticAudio

torchaudio = import_torchaudio()
log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# audio that libsndfile cannot promise to read: reported and counted instead of silently ignored
UNSUPPORTED_EXTENSIONS = (".mp3", ".m4a", ".aac", ".wma", ".opus", ".webm", ".mp4")
NORMALIZATIONS = ("peak", "loudness", "none")
SILENCE = 1e-4  # clips quieter than this peak are left as they are instead of being amplified
RESAMPLE_MARGIN = 64  # extra source frames read on each side so the resampling filter has context
EXTENSIONS = set(AUDIO_EXTENSIONS)  # what `python -m datamodules.shards --domain audio` packs


@dataclass(frozen=True)
class AudioFile:
    path: Path
    frames: int
    sample_rate: int
    channels: int


def list_audio(root: Path, extensions=AUDIO_EXTENSIONS + UNSUPPORTED_EXTENSIONS) -> list[Path]:
    # hidden files are skipped: macOS copies leave a "._name.wav" resource fork beside every file
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file())


def probe(path: Path) -> AudioFile:
    """Header plus the last frames: catches unreadable, empty and truncated files cheaply.

    Raises ``ValueError`` with the reason when the file cannot be used.
    """
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise ValueError(f"unsupported format {path.suffix}; convert to {', '.join(AUDIO_EXTENSIONS)}")
    try:
        info = sf.info(str(path))
        if info.frames <= 0:
            raise ValueError("zero-length file (no audio frames)")
        tail, _ = sf.read(str(path), start=max(info.frames - 16, 0), frames=16, dtype="float32",
                          always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ValueError(f"corrupt or truncated ({e})") from None
    if len(tail) == 0:
        raise ValueError("truncated (header promises more frames than the file holds)")
    return AudioFile(path, int(info.frames), int(info.samplerate), int(info.channels))


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``(c, n)`` -> ``(channels, n)``: average to mono, duplicate mono to stereo, keep the first two."""
    if x.shape[0] == channels:
        return x
    if channels == 1:
        return x.mean(0, keepdim=True)
    return x[:2] if x.shape[0] >= 2 else x.expand(2, -1).clone()


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Cut to ``length`` samples or zero-pad at the end."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def normalize(x: torch.Tensor, mode: str, sample_rate: int, peak_level: float = 0.95,
              target_lufs: float = -20.0) -> torch.Tensor:
    """Scale one clip into [-1, 1]: to ``peak_level``, or to ``target_lufs`` and down if it peaks over 1."""
    peak = x.abs().max()
    if mode == "none" or peak < SILENCE:
        return x.clamp(-1, 1)
    if mode == "peak":
        return x * (peak_level / peak)
    if x.shape[-1] >= int(0.4 * sample_rate):  # ITU-R BS.1770 needs at least one 400 ms gating block
        level = torchaudio.functional.loudness(x, sample_rate)
    else:
        level = 10 * torch.log10(x.pow(2).mean().clamp_min(1e-12)) - 0.691  # ungated mean-square level
    if not torch.isfinite(level):
        return x * (peak_level / peak)
    x = x * 10 ** ((target_lufs - level) / 20)
    return x / max(1.0, float(x.abs().max()))


def read_clip(snd: sf.SoundFile, sample_rate: int, length: int, channels: int,
              random_crop: bool) -> torch.Tensor:
    """``(channels, length)`` at ``sample_rate`` from an open file, reading only the frames the crop needs.

    The crop starts at a random frame (global torch RNG) for training, in the centre otherwise.
    """
    rate = snd.samplerate
    need = math.ceil(length * rate / sample_rate)  # source frames for one clip
    room = max(snd.frames - need, 0)
    start = int(torch.randint(0, room + 1, (1,))) if random_crop else room // 2
    margin = RESAMPLE_MARGIN if rate != sample_rate else 0
    lo = max(start - margin, 0)
    snd.seek(lo)
    data = snd.read(need + (start - lo) + margin, dtype="float32", always_2d=True)
    x = match_channels(torch.from_numpy(data.T.copy()), channels)
    if not bool(torch.isfinite(x).all()):  # a float WAV may hold them; the file is skipped and named, not trained on
        raise ValueError("holds NaN or infinite samples")
    if rate != sample_rate:
        x = torchaudio.functional.resample(x, rate, sample_rate)
        x = x[:, round((start - lo) * sample_rate / rate):]
    return fit_length(x, length)


class ClipTransform:
    """Normalises a ``(channels, length)`` clip; shared by folder and built-in data."""

    def __init__(self, sample_rate: int, mode: str, peak_level: float, target_lufs: float):
        self.sample_rate, self.mode = sample_rate, mode
        self.peak_level, self.target_lufs = peak_level, target_lufs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mode, self.sample_rate, self.peak_level, self.target_lufs)


class AudioFolder(FileItems):
    """Fixed-length clips from probed files; an unreadable file is skipped for the next one."""

    what, unreadable = "audio file", (sf.LibsndfileError, RuntimeError, OSError, ValueError)

    def __init__(self, files: list[AudioFile], sample_rate: int, length: int, channels: int,
                 random_crop: bool, transform: ClipTransform, labels: list[int] | None = None,
                 captions: list[str] | None = None):
        super().__init__(files, labels, captions)
        self.sample_rate, self.length, self.channels = sample_rate, length, channels
        self.random_crop, self.transform = random_crop, transform

    def path(self, i: int) -> Path:
        return self.files[i].path

    def load(self, i: int) -> torch.Tensor:
        with sf.SoundFile(str(self.files[i].path)) as snd:
            return self.transform(read_clip(snd, self.sample_rate, self.length, self.channels, self.random_crop))


class WithLogMel(Dataset):
    """Adds ``LogMel`` of the clip as ``cond``."""

    def __init__(self, base: Dataset, sample_rate: int, n_mels: int, n_fft: int = 1024,
                 hop_length: int = 256):
        self.base, self.log_mel = base, LogMel(sample_rate, n_mels, n_fft, hop_length, mono=True)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item["cond"] = self.log_mel(item["x"])
        return item


# ---- webdataset shards (interface in datamodules/shards.py) ----------------------------------------------
def list_items(root: Path) -> list[Path]:
    """The folder path's own listing (unsupported formats included, so they are skipped and counted)."""
    return list_audio(root)


def pack_sample(path: Path) -> tuple[dict[str, bytes], dict]:
    """The file's own encoded bytes, once it passes the folder path's ``probe`` (else ``ValueError``)."""
    f = probe(path)
    meta = {"frames": f.frames, "sample_rate": f.sample_rate, "channels": f.channels}
    return {path.suffix.lower().lstrip("."): path.read_bytes()}, meta


def mel_from_file(path: str | Path, sample_rate: int, channels: int, normalize_mode: str, peak_level: float,
                  target_lufs: float, n_mels: int, hop_length: int) -> tuple[torch.Tensor, int]:
    """A whole file's vocoder input, computed as training computes ``cond``: ``(log-mel, waveform length)``.

    The file is mixed to ``channels``, resampled to ``sample_rate`` and normalised like a training clip.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"mel_from={p} does not exist; pass a wav/flac/ogg file.")
    try:
        with sf.SoundFile(str(p)) as snd:
            rate = snd.samplerate
            data = snd.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"mel_from={p} could not be read as audio ({e}); pass a wav/flac/ogg file.") from None
    if data.shape[0] == 0:
        raise DataError(f"mel_from={p} has no audio frames; pass a non-empty file.")
    x = match_channels(torch.from_numpy(data.T.copy()), channels)
    if rate != sample_rate:
        x = torchaudio.functional.resample(x, rate, sample_rate)
    x = normalize(x, normalize_mode, sample_rate, peak_level, target_lufs)
    return LogMel(sample_rate, n_mels, hop_length=hop_length, mono=True)(x), x.shape[-1]


def decode_sample(sample: dict, sample_rate: int, length: int, channels: int, random_crop: bool,
                  transform: ClipTransform, log_mel: LogMel | None = None) -> dict:
    """One shard sample -> ``{"x": tensor}`` (and ``cond``), exactly as ``AudioFolder`` reads the same file."""
    ext = next((e[1:] for e in AUDIO_EXTENSIONS if e[1:] in sample), None)
    if ext is None:
        raise ValueError(f"no audio member ({', '.join(AUDIO_EXTENSIONS)}) in the sample")
    with sf.SoundFile(io.BytesIO(sample[ext])) as snd:
        if snd.frames <= 0:
            raise ValueError("zero-length audio (no frames)")
        item = {"x": transform(read_clip(snd, sample_rate, length, channels, random_crop))}
    if log_mel is not None:
        item["cond"] = log_mel(item["x"])
    return item


class AudioDataModule(DiffusionDataModule):
    def __init__(self, path: str | None = None, sample_rate: int = 16000, clip_seconds: float = 0.5,
                 channels: int = 1, normalize: str = "peak", peak_level: float = 0.95,
                 target_lufs: float = -20.0,
                 mel_conditioning: bool = False, n_mels: int = 80, hop_length: int = 256,
                 val_fraction: float = 0.05, max_bad_fraction: float = 0.01, builtin_size: int = 2048, **kw):
        super().__init__(**kw)
        if channels not in (1, 2):
            raise DataError(f"datamodule.channels must be 1 (mono) or 2 (stereo) for audio, got {channels}.")
        if normalize not in NORMALIZATIONS:
            raise DataError(f"datamodule.normalize must be one of {', '.join(NORMALIZATIONS)}, "
                            f"got '{normalize}'.")
        if sample_rate <= 0 or clip_seconds <= 0:
            raise DataError("datamodule.sample_rate and datamodule.clip_seconds must be positive.")
        val_fraction = fraction(val_fraction, "datamodule.val_fraction")
        max_bad_fraction = fraction(max_bad_fraction, "datamodule.max_bad_fraction")
        builtin_size = positive_int(builtin_size, "datamodule.builtin_size")
        n_mels, hop_length = positive_int(n_mels, "datamodule.n_mels"), positive_int(hop_length,
                                                                                     "datamodule.hop_length")
        self.path, self.sample_rate, self.channels = path, int(sample_rate), channels
        self.length = max(1, round(clip_seconds * sample_rate))
        self.transform = ClipTransform(self.sample_rate, normalize, peak_level, target_lufs)
        self.mel_conditioning, self.n_mels, self.hop_length = mel_conditioning, n_mels, hop_length
        self.val_fraction, self.max_bad_fraction = val_fraction, max_bad_fraction
        self.builtin_size = builtin_size
        self.num_bad = self.num_padded = 0
        self._listing: tuple[list[AudioFile], list[int] | None] | None = None

    @property
    def data_shape(self) -> list[int]:
        return [self.channels, self.length]

    def _scan(self, root: Path) -> list[AudioFile]:
        good, counter = probe_folder(root, "audio file", "wav/flac/ogg files", list_audio, probe, (ValueError,),
                                     self.max_bad_fraction, "built-in sounds")
        self.num_bad = counter.count
        short = [f for f in good if f.frames * self.sample_rate < self.length * f.sample_rate]
        self.num_padded = len(short)
        if short:
            log.warning("%d of %d audio files are shorter than the %.3f s clip and are zero-padded "
                        "(e.g. %s).",
                        len(short), len(good), self.length / self.sample_rate, short[0].path)
        resampled = sum(f.sample_rate != self.sample_rate for f in good)
        if resampled:
            log.info("%d of %d audio files are resampled to %d Hz.", resampled, len(good), self.sample_rate)
        return good

    @staticmethod
    def item_path(item) -> Path:
        return item.path

    def folder_classes(self) -> list[str]:
        return self.labelled_folder_classes()

    def shard_decoder(self, train: bool):
        log_mel = LogMel(self.sample_rate, self.n_mels, hop_length=self.hop_length, mono=True) \
            if self.mel_conditioning else None
        return functools.partial(decode_sample, sample_rate=self.sample_rate, length=self.length,
                                 channels=self.channels, random_crop=train, transform=self.transform,
                                 log_mel=log_mel)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.is_streaming:
            return
        if self.path:
            files, labels, train_idx, val_idx = self.split_files()
            args = (self.sample_rate, self.length, self.channels)
            self.train_set = AudioFolder([files[i] for i in train_idx], *args, True, self.transform,
                                         **self.item_extras(labels, train_idx))
            self.val_set = AudioFolder([files[i] for i in val_idx], *args, False, self.transform,
                                       **self.item_extras(labels, val_idx))
        else:
            if self.label_source != "none":
                raise self.no_builtin_labels()
            if self.has_captions:
                raise self.no_builtin_captions()
            full = SyntheticAudio(self.builtin_size, self.length, self.sample_rate, self.channels, self.seed,
                                  self.transform)
            train_idx, val_idx = split_indices(len(full), self.val_fraction, self.seed)
            self.train_set, self.val_set = Subset(full, train_idx), Subset(full, val_idx)
        if self.mel_conditioning:
            mel = dict(sample_rate=self.sample_rate, n_mels=self.n_mels, hop_length=self.hop_length)
            self.train_set, self.val_set = WithLogMel(self.train_set, **mel), WithLogMel(self.val_set, **mel)
