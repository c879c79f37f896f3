"""What a new user meets first: ~ in overrides, fresh sampling seeds, WAVs that are safe to play."""

import os

import soundfile as sf
import torch

from src.config import expand_home
from src.domains.audio.media import LISTENING_PEAK, AudioMedia, for_listening
from src.sample import DEFAULTS


def test_tilde_after_equals_is_expanded(compose_cfg):
    home = os.path.expanduser("~")
    args = expand_home(["datamodule.path=~/my_pngs", "paths.output_dir=~", "seed=3", "name=a~b"])
    assert args == [f"datamodule.path={home}/my_pngs", f"paths.output_dir={home}", "seed=3", "name=a~b"]
    cfg = compose_cfg(expand_home(["datamodule.path=~/my_pngs"]))
    assert cfg.datamodule.path == f"{home}/my_pngs"


def test_sample_defaults_to_a_fresh_seed():
    assert DEFAULTS["seed"] is None  # training previews use the run's seed (0 by default)


def test_loud_audio_is_attenuated_quiet_audio_untouched(tmp_path):
    loud = torch.ones(1, 1, 800)
    quiet = 0.1 * torch.sin(torch.linspace(0, 60, 800)).view(1, 1, -1)
    out = for_listening(torch.cat([loud, quiet]))
    assert out[0].abs().max() <= LISTENING_PEAK + 1e-6
    assert torch.equal(out[1], quiet[0])
    (p,) = AudioMedia(sample_rate=8000).save(loud, tmp_path)
    data, _ = sf.read(p)
    assert abs(data).max() <= LISTENING_PEAK + 1e-3
