"""End to end: the audio smoke run through `python -m src.train`, then `src.sample` on its checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]


def check_wavs(paths, rate, length):
    assert paths
    for p in paths:
        data, sr = sf.read(p, dtype="float32")
        assert sr == rate and data.shape[0] == length, p
        assert np.isfinite(data).all() and np.abs(data).max() > 1e-3, f"{p} is silent or not finite"


@pytest.mark.slow
def test_audio_smoke_training_and_sampling(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "src.train", "domain=audio", "experiment=smoke",
                           f"paths.output_dir={out}", "trainer.enable_progress_bar=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "config.yaml").exists()
    check_wavs(sorted((out / "samples").glob("*.wav")), 16000, 8000)

    run = next((out / "wandb").glob("offline-run-*"))
    media = run / "files" / "media"
    check_wavs(sorted(media.rglob("*.wav")), 16000, 8000)
    assert len(list(media.rglob("spectrogram*.png"))) == len(list((out / "samples").glob("*.wav")))
    logged = next(run.glob("*.wandb")).read_bytes()
    for key in (b"val/mrstft", b"val/frechet_mel", b"samples/ema/audio"):
        assert key in logged, key

    from src.sample import main as sample_main

    sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "num_samples=3", "steps=4", "device=cpu",
                 f"out={tmp_path / 'drawn'}"])
    check_wavs(sorted((tmp_path / "drawn").glob("*.wav")), 16000, 8000)
    assert len(list((tmp_path / "drawn").glob("*.wav"))) == 3
