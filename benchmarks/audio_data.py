"""Small class-labelled speech sets from Debian packages, for the audio study (docs/studies/audio_latent.md).

    python benchmarks/audio_data.py --out /tmp/channel_words
    python benchmarks/audio_data.py --set digits --out /tmp/spoken_digits

``channels`` (the default): eight classes, the loudspeaker-channel phrases ("front center", "rear left", ...),
spoken by
- a recorded human voice: alsa-utils' /usr/share/sounds/alsa/<Front_Center>.wav (48 kHz),
- five flite voices (kal, kal16, awb, rms, slt: diphone, clustergen and unit-selection engines),
- festival's kal_diphone voice (text2wave),
each with variants: pitch and speaking rate for the synthesised voices (flite's int_f0_target_mean and
duration_stretch, festival through resampling), speed (tape-style resampling) for the recording.
``digits``: ten classes, the single words "zero" ... "nine", spoken by the same five flite voices and three
festival voices (kal_diphone, ked_diphone, the HTS voice cmu_us_slt_arctic_hts), with the same variants; no
recording (alsa-utils records only the channel phrases).
Every clip is mono 16 kHz, silence trimmed, centred in CLIP samples (1.024 s): DIR/<class>/<source>_<variant>.wav.
Install the sources with ``apt-get install alsa-utils flite festival festvox-kallpc16k`` (digits also
``festvox-kdlpc16k festvox-us-slt-hts``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

RATE = 16000
CLIP = 16384  # 1.024 s: 256 frames of the waveform autoencoder's hop of 64
PHRASES = ["front center", "front left", "front right", "rear center", "rear left", "rear right", "side left",
           "side right"]
ALSA = Path("/usr/share/sounds/alsa")
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]
# festival voices per set (None: text2wave's default voice, kal_diphone)
FESTIVAL_VOICES = {"channels": [None], "digits": ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]}
# (pitch target Hz or None for the voice's own, duration stretch)
FLITE_VARIANTS = [(None, 1.0), (None, 0.85), (None, 1.15), (90, 1.0), (140, 0.9), (200, 1.0)]
SPEEDS = [0.9, 0.95, 1.0, 1.05, 1.1, 1.2]  # resampling factors for the recording and festival


def load(path: Path) -> np.ndarray:
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(x.mean(1))
    return AF.resample(x, rate, RATE).numpy() if rate != RATE else x.numpy()


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Tape-style speed change: faster and higher by ``factor``."""
    return AF.resample(torch.from_numpy(x), int(round(RATE * factor)), RATE).numpy() if factor != 1 else x


def fit(x: np.ndarray, threshold_db: float = -35.0) -> np.ndarray:
    """Silence trimmed (20 ms frames under threshold_db of the peak), peak 0.9, centred (or centre-cropped)."""
    frame = RATE // 50
    n = len(x) // frame
    level = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(1) + 1e-12)
    loud = np.nonzero(20 * np.log10(level / level.max()) > threshold_db)[0]
    x = x[loud[0] * frame:(loud[-1] + 1) * frame] if len(loud) else x
    x = 0.9 * x / max(np.abs(x).max(), 1e-6)
    out = np.zeros(CLIP, dtype=np.float32)
    if len(x) >= CLIP:
        start = (len(x) - CLIP) // 2
        out[:] = x[start:start + CLIP]
    else:
        start = (CLIP - len(x)) // 2
        out[start:start + len(x)] = x
    return out


def build(out: Path, which: str = "channels") -> dict:
    recorded_voice = which == "channels"
    words = PHRASES if which == "channels" else DIGITS
    for tool in ("flite", "text2wave"):
        if shutil.which(tool) is None:
            raise SystemExit(f"error: {tool} is not installed; apt-get install flite festival festvox-kallpc16k")
    if recorded_voice and not (ALSA / "Front_Center.wav").is_file():
        raise SystemExit(f"error: {ALSA}/Front_Center.wav is missing; apt-get install alsa-utils")
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_wav = Path(tmp) / "t.wav"
        for phrase in words:
            name = phrase.replace(" ", "_")
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            clips: dict[str, np.ndarray] = {}
            if recorded_voice:
                recorded = load(ALSA / f"{phrase.title().replace(' ', '_')}.wav")
                for k, f in enumerate(SPEEDS):
                    clips[f"alsa_{k}"] = speed(recorded, f)
            for voice in FLITE_VOICES:
                for k, (pitch, stretch) in enumerate(FLITE_VARIANTS):
                    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}"]
                    cmd += ["--setf", f"int_f0_target_mean={pitch}"] if pitch else []
                    subprocess.run(cmd + ["-t", phrase, "-o", str(tmp_wav)], check=True, capture_output=True)
                    clips[f"flite-{voice}_{k}"] = load(tmp_wav)
            for voice in FESTIVAL_VOICES[which]:
                cmd = ["text2wave", "-o", str(tmp_wav)] + (["-eval", f"(voice_{voice})"] if voice else [])
                try:
                    subprocess.run(cmd, input=phrase.encode(), check=True, capture_output=True)
                except subprocess.CalledProcessError:
                    raise SystemExit(f"error: festival has no voice {voice}; apt-get install festvox-kdlpc16k "
                                     "festvox-us-slt-hts") from None
                spoken = load(tmp_wav)
                tag = "festival" if voice is None else f"festival-{voice.split('_')[0]}"
                for k, f in enumerate(SPEEDS):
                    clips[f"{tag}_{k}"] = speed(spoken, f)
            for key, x in clips.items():
                sf.write(folder / f"{key}.wav", fit(x), RATE, subtype="PCM_16")
            counts[name] = len(clips)
    festival = [f"festival {v or 'kal_diphone'}" for v in FESTIVAL_VOICES[which]]
    info = {"set": which, "classes": list(counts), "clips_per_class": counts, "sample_rate": RATE,
            "clip_samples": CLIP, "sources": [*(["alsa-utils recording"] if recorded_voice else []),
                                              *[f"flite {v}" for v in FLITE_VOICES], *festival]}
    out.with_name(out.name + ".json").write_text(json.dumps(info, indent=1))  # beside: the folder holds only classes
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write DIR/<class>/*.wav into")
    p.add_argument("--set", choices=sorted(FESTIVAL_VOICES), default="channels",
                   help="channels: eight loudspeaker-channel phrases (with a recorded voice); digits: zero ... nine")
    args = p.parse_args()
    info = build(args.out, args.set)
    print(f"{sum(info['clips_per_class'].values())} clips in {len(info['classes'])} classes")


if __name__ == "__main__":
    main()
