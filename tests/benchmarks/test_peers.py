"""benchmarks.peers: every recipe trained on the same data and budget, matched parameters, one scorer."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import peers
from benchmarks.peers_recipes import diffusers_unet, match_diffusers_width, num_params
from src.errors import ConfigError
from tests.conftest import ROOT, run_module


def write_digit_subset(folder, per_class: int = 12, classes: int = 4):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(classes):
        (folder / str(c)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(d.target == c)[:per_class]):
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(folder / str(c) / f"{k}.png")
    return folder


def write_tones(folder, rate: int = 8000):
    import soundfile as sf

    t = np.arange(rate // 2) / rate
    for name, freq in (("low", 220.0), ("high", 880.0)):
        (folder / name).mkdir(parents=True)
        for k in range(3):
            sf.write(folder / name / f"{k}.wav", 0.5 * np.sin(2 * np.pi * freq * (1 + 0.02 * k) * t), rate)
    return folder


def test_minutes_accept_a_list_and_refuse_nonsense():
    assert peers.parse_minutes("2,5,10") == [2.0, 5.0, 10.0]
    assert peers.parse_minutes("0.05") == [0.05]
    for bad in ("", "two", "2,-1", "0"):
        with pytest.raises(ConfigError, match="--minutes must be positive numbers"):
            peers.parse_minutes(bad)


def test_diffusers_network_is_matched_to_the_framework_within_ten_percent():
    from src.backbones import build_backbone

    for channels, res in ((1, 16),):
        target = num_params(build_backbone({"name": "unet", "spatial_dims": 2, "in_channels": channels,
                                            "preset": "tiny"}))
        base = match_diffusers_width(res, channels, target)
        assert abs(num_params(diffusers_unet(res, channels, base)) / target - 1) <= peers.PARAM_TOLERANCE


def test_parameter_counts_off_by_more_than_ten_percent_are_refused():
    rows = [{"recipe": "framework", "params": 1000}, {"recipe": "edm", "params": 1000},
            {"recipe": "diffusers", "params": 1080}]
    peers.check_params(rows)
    assert rows[2]["params_vs_framework"] == 0.08
    with pytest.raises(RuntimeError, match="more than 10%"):
        peers.check_params(rows + [{"recipe": "other", "params": 1200}])


def test_a_budgeted_process_is_stopped_at_its_cpu_budget(tmp_path):
    spin = "import time\nwhile True: sum(range(10000))"
    out = peers.run_budgeted([sys.executable, "-c", spin], tmp_path / "log", 0.5, cuda=False)
    assert out["stopped_by_signal"] and out["returncode"] == -15
    assert out["cpu_s"] >= 0.5 and out["maxrss_mb"] > 0


def test_bad_input_returns_2_with_one_sentence(tmp_path, capsys):
    for args, text in ((["--domain", "image", "--minutes", "x", "--data", str(tmp_path)], "--minutes must be"),
                       (["--domain", "audio", "--minutes", "1", "--data", str(tmp_path / "none")], "is not a folder"),
                       (["--domain", "audio", "--minutes", "1", "--data", str(tmp_path)], "holds no audio files"),
                       (["--domain", "audio", "--minutes", "1", "--data", str(tmp_path), "--clip-seconds", "0.5"],
                        "--clip-seconds 0.5 at --sample-rate 16000 gives 8000 samples; the audio preset needs a "
                        "multiple of 2048 (8 mel frames of 256), e.g. --clip-seconds 0.512.")):
        assert peers.main([*args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and text in err and err.count("\n") == 1, err


@pytest.mark.slow  # one interpreter with torch
def test_bad_input_exits_2_with_one_sentence(tmp_path):
    r = run_module(["benchmarks.peers", "--domain", "audio", "--minutes", "1", "--data", str(tmp_path), "--out",
                    str(tmp_path / "out")], timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "holds no audio files" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def check_result(result: dict, recipes: tuple[str, ...], stdout: str) -> None:
    rows = result["budgets"][0]["rows"]
    assert {r["recipe"] for r in rows} == set(recipes)
    fw = next(r["params"] for r in rows if r["recipe"] == "framework")
    for r in rows:
        assert abs(r["params"] / fw - 1) <= 0.10 and math.isfinite(r["frechet"]) and r["samples_per_cpu_s"] > 0
        assert r["train_cpu_s"] > 0 and r["train_maxrss_mb"] > 0
        assert f"| {r['recipe']} | {r['params']:,} |" in stdout  # the printed table names every recipe's count


@pytest.mark.slow
def test_image_and_audio_benchmarks_end_to_end_on_tiny_data(tmp_path, capsys):
    """Each benchmark trains and samples every recipe in processes of its own, one after the other: the audio one
    runs through its command line while the image one runs in this process, at the same time."""
    tones = write_tones(tmp_path / "tones")
    audio_out = (tmp_path / "audio.out").open("w+")
    audio = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.peers", "--domain", "audio", "--minutes", "0.05", "--data", str(tones),
         "--out", str(tmp_path / "audio"), "--json", str(tmp_path / "audio.json"), "--samples", "4", "--held-out",
         "4", "--clip-seconds", "0.256"], cwd=ROOT, stdout=audio_out,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:
        digits = write_digit_subset(tmp_path / "digits")
        out = tmp_path / "image"
        assert peers.main(["--domain", "image", "--minutes", "0.05", "--data", str(digits), "--out", str(out),
                           "--json", str(tmp_path / "image.json"), "--samples", "8", "--ddpm-samples", "2",
                           "--held-out", "12", "--resolution", "8"]) == 0
        image_stdout = capsys.readouterr().out
        audio.wait(timeout=1800)  # a guard against a hang, not a speed target
    finally:
        if audio.poll() is None:
            audio.kill()
            audio.wait()
        audio_out.seek(0)
        audio_stdout = audio_out.read()
        audio_out.close()

    result = json.loads((tmp_path / "image.json").read_text())
    check_result(result, ("framework", "edm", "diffusers"), image_stdout)
    samplers = {(row["recipe"], row["sampler"], row["steps"]) for row in result["budgets"][0]["rows"]}
    assert {("framework", "dpmpp_2m_sde", 32), ("edm", "heun", 16), ("diffusers", "ddpm", 1000),
            ("diffusers", "ddim", 32), ("diffusers", "dpmpp_2m", 32)} <= samplers
    assert (out / "grid_image_0.05min.png").is_file() and "max_prob" in result["reference"]

    assert audio.returncode == 0, audio_stdout[-3000:]
    result = json.loads((tmp_path / "audio.json").read_text())
    check_result(result, ("framework", "edm", "diffwave"), audio_stdout)
    # audio's recommended preset is the one-stage mel-image model, and DiffWave is sized to its parameter count
    assert all("experiment=audio_quickstart" in r["command"] for r in result["budgets"][0]["rows"]
               if r["recipe"] in ("framework", "edm"))
    assert (tmp_path / "audio" / "grid_audio_0.05min.png").is_file()
