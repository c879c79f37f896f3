"""End to end: the audio smoke run (`src.train domain=audio experiment=smoke`, in this process: the CLI's own
contract is tested in tests/cli), its W&B media, then `src.sample` on its checkpoint."""

import numpy as np
import pytest
import soundfile as sf

RATE, CLIP_SECONDS, LENGTH = 16000, 0.128, 2048  # a short clip of the smoke run's sample rate


def check_wavs(paths, rate, length):
    assert paths
    for p in paths:
        data, sr = sf.read(p, dtype="float32")
        assert sr == rate and data.shape[0] == length, p
        assert np.isfinite(data).all() and np.abs(data).max() > 1e-3, f"{p} is silent or not finite"


@pytest.mark.slow
def test_audio_smoke_training_and_sampling(compose_cfg, tmp_path):
    import wandb

    from src.train import train

    out = tmp_path / "run"
    try:
        train(compose_cfg(["domain=audio", "experiment=smoke", f"paths.output_dir={out}",
                           "trainer.enable_progress_bar=false", f"datamodule.clip_seconds={CLIP_SECONDS}",
                           "datamodule.builtin_size=64", "trainer.max_steps=4", "trainer.val_check_interval=4",
                           "trainer.limit_val_batches=1", "sampling.every_n_steps=4", "sampling.num=2",
                           "sampling.steps=4", "checkpoint.every_n_steps=4", "optim.warmup_steps=1"]))
    finally:
        wandb.finish()
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "config.yaml").exists()
    written = sorted((out / "samples").glob("*.wav"))
    assert len(written) == 2  # sampling.num at the last step
    check_wavs(written, RATE, LENGTH)

    run = next((out / "wandb").glob("offline-run-*"))
    media = run / "files" / "media"
    check_wavs(sorted(media.rglob("*.wav")), RATE, LENGTH)
    assert len(list(media.rglob("spectrogram*.png"))) == len(written)
    logged = next(run.glob("*.wandb")).read_bytes()
    for key in (b"val/mrstft", b"val/frechet_mel", b"samples/ema/audio"):
        assert key in logged, key

    from src.sample import main as sample_main

    sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "num_samples=3", "steps=4", "device=cpu",
                 f"out={tmp_path / 'drawn'}"])
    check_wavs(sorted((tmp_path / "drawn").glob("*.wav")), RATE, LENGTH)
    assert len(list((tmp_path / "drawn").glob("*.wav"))) == 3
