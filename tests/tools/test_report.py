"""Reports of run folders: the metrics file a run writes, the HTML page (opened in headless Chromium), the W&B
report object, and the W&B run a resumed job continues."""

from __future__ import annotations

import html.parser
import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.report import ReportError
from src.report.__main__ import main as report_main
from src.report.media import mri_slices
from src.report.metrics_jsonl import read_metrics
from src.report.page import build_html, write_html
from src.report.run import config_differences, load_run
from tests.conftest import ROOT, compose
from tests.helpers.mri import phantom, write_nifti

ARTIFACTS = Path(os.environ.get("REPORT_TEST_ARTIFACTS", ROOT / "tests" / "artifacts" / "report"))
TINY = ["experiment=smoke", "trainer.accelerator=cpu", "trainer.max_steps=10", "trainer.val_check_interval=5",
        "trainer.log_every_n_steps=2", "sampling.every_n_steps=5", "checkpoint.every_n_steps=5"]
PAGE_LIMIT = 2 * 2**20  # bytes: a report of a run with 50 logged sample grids stays under 2 MiB


def _train(out: Path, *extra: str) -> tuple[dict, dict]:
    """A smoke run in this process (``python -m src.train`` calls the same ``train``; the CLI's own contract is
    tested in tests/cli): its result and the W&B run's summary, read before the run is closed."""
    import wandb

    from src.train import train

    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("SLURM_")]:
            mp.delenv(name)  # a preempted run outside SLURM must not requeue the job the tests run in
        try:
            result = train(compose([*TINY, f"paths.output_dir={out}", *extra]))
            summary = {k: wandb.run.summary[k] for k in wandb.run.summary.keys()} if wandb.run else {}
        finally:
            wandb.finish()
    return result, summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An image and an audio smoke run, and an MRI reconstruction's metrics JSON inside the image run."""
    from src.reconstruct import main as reconstruct_main

    base = tmp_path_factory.mktemp("runs")
    image, audio = base / "image-run", base / "audio-run"
    image_result, image_summary = _train(image, "domain=image", "datamodule.resolution=16",
                                         "datamodule.builtin_size=128")
    _train(audio, "domain=audio", "sampling.num=2", "datamodule.clip_seconds=0.128",
           "datamodule.builtin_size=128")
    vol = write_nifti(base / "phantom.nii.gz", phantom((16, 16, 4)).astype(np.float32))
    # the reconstruction CLI in this process (`python -m src.reconstruct` runs the same main)
    reconstruct_main(["--method", "cs", "--simulate", "--input", str(vol), "--output",
                      str(image / "recon" / "phantom_cs.nii.gz"), "--cs-iters", "10", "--quiet"])
    return {"image": image, "audio": audio, "image_result": image_result, "image_summary": image_summary}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A run preempted with SIGUSR1 (as SLURM sends it before its time limit) once its step-5 checkpoint exists,
    then resumed by the same config; both in this process, the signal sent by a watcher thread."""
    out = tmp_path_factory.mktemp("resumed") / "run"

    sent, finished = threading.Event(), threading.Event()

    def preempt_at_step_5():
        while not finished.is_set():
            if (out / "checkpoints" / "step0000005.ckpt").exists():
                sent.set()
                os.kill(os.getpid(), signal.SIGUSR1)  # handled in the main thread, where train() runs
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=preempt_at_step_5, daemon=True)
    watcher.start()
    try:
        result, _ = _train(out, "trainer.max_steps=400", "optim.total_steps=400")
    finally:
        finished.set()
        watcher.join()
    assert sent.is_set() and result["preempted"] and result["global_step"] < 400
    stopped = [e for e in read_metrics(out / "metrics.jsonl").events if e["event"] == "preempted"]
    assert len(stopped) == 1 and stopped[0]["step"] == result["global_step"]
    _train(out, f"trainer.max_steps={stopped[0]['step'] + 6}", "optim.total_steps=400")
    return out, stopped[0]["step"]


class Elements(html.parser.HTMLParser):
    """Tags with their attributes, from a page or from the DOM Chromium dumps."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def chromium(page: Path, screenshot: Path) -> str:
    """The DOM of ``page`` after Chromium loaded it from the file (and a screenshot of it), from one launch."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    run = subprocess.run([exe, *flags, "--window-size=1200,4000", f"--screenshot={screenshot}", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, run.stderr[-2000:]
    return run.stdout


def with_image_check(page: Path, out: Path) -> Path:
    """A copy of the page whose body records, once loaded, how many images and audio players failed to decode."""
    script = ("<script>window.addEventListener('load',()=>{const bad=[...document.images].filter("
              "i=>!i.complete||i.naturalWidth===0).length;document.body.setAttribute('data-broken-images',bad);"
              "document.body.setAttribute('data-wav-playable',[...document.querySelectorAll('audio')].every("
              "a=>a.canPlayType('audio/wav')!==''));});</script>")
    out.write_text(page.read_text().replace("</body>", script + "</body>"))
    return out


@pytest.mark.slow
def test_metrics_file_of_a_run(runs):
    image, audio = runs["image"], runs["audio"]
    log = read_metrics(image / "metrics.jsonl")
    assert [e["event"] for e in log.events] == ["start", "end"]
    for key in ("train/loss", "val/loss", "val/loss_bucket0", "val/loss_bucket4", "train/grad_norm",
                "perf/samples_per_sec", "lr-AdamW"):
        steps, values = log.series[key]
        assert steps == sorted(steps) and all(np.isfinite(values)), key
    assert log.series["val/loss"][0] == [4, 9]  # validation every 5 steps, logged at the step before it
    assert log.final["val/loss"] == log.series["val/loss"][1][-1]
    assert {"val/mrstft", "val/frechet_mel"} <= set(read_metrics(audio / "metrics.jsonl").series)


def test_read_metrics_drops_replayed_steps_and_torn_lines(tmp_path):
    f = tmp_path / "metrics.jsonl"
    lines = [{"event": "start", "step": 0}, *[{"step": s, "metrics": {"train/loss": 1.0}} for s in (2, 4, 6)],
             {"event": "resume", "step": 4}, {"step": 6, "metrics": {"train/loss": 0.5}}]
    f.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 8, "metr')
    log = read_metrics(f)
    assert log.series["train/loss"] == ([2, 6], [1.0, 0.5])  # step 4 is logged after 5 steps, past the resume
    assert [e["event"] for e in log.events] == ["start", "resume"]
    assert log.final == {"train/loss": 0.5}  # no end event: the last value of each key


def test_not_a_run_folder_is_one_sentence(tmp_path, capsys):
    with pytest.raises(ReportError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"empty is not a run folder \(it has no config.yaml\)"):
        load_run(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("a: [1,\n")
    with pytest.raises(ReportError, match="config.yaml is not valid YAML"):
        load_run(tmp_path / "bad")
    assert report_main([str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_report_of_two_domains_in_a_browser(runs, tmp_path):
    image, audio = runs["image"], runs["audio"]
    out = tmp_path / "report.html"
    assert report_main([str(image), str(audio), "--out", str(out)]) == 0
    page = out.read_text()
    assert "http://" not in page and "https://" not in page  # nothing is fetched at view time
    diff = config_differences([load_run(image), load_run(audio)])
    assert diff["domain.name"] == ["image", "audio"] and "media.sample_rate" in diff

    dom = Elements(chromium(with_image_check(out, tmp_path / "checked.html"), ARTIFACTS / "two_domains.png"))
    sections = {a["id"] for a in dom.find("section")}
    assert sections == {"overview", "config", "curves", "samples", "metrics", "results", "checkpoints"}
    body = dom.find("body")[0]
    assert body["data-broken-images"] == "0" and body["data-wav-playable"] == "true"
    plots = {a["data-plot"] for a in dom.find("img", "plot")}
    assert plots == {"loss", "buckets-0", "buckets-1", "lr", "grad_norm", "throughput", "domain"}
    steps = [a["data-step"] for a in dom.find("div", "sample-step")]
    assert steps == ["5", "10", "5", "10"]  # both runs, each at both sample steps
    assert len(dom.find("img", "sample-grid")) == 2
    audio_tags = dom.find("audio", "sample-audio")
    assert len(audio_tags) == 4 and all(a["src"].startswith("data:audio/wav;base64,") for a in audio_tags)
    assert len(dom.find("img", "spectrogram")) == 4
    assert len(dom.find("table", "config-diff")) == 1 and len(dom.find("table", "domain-metrics")) == 1
    results = dom.find("tr", "baseline")
    assert len(results) == 1  # the zero-filled baseline next to the compressed-sensing reconstruction
    assert "zero_filled (baseline)" in page and "val/frechet_mel" in page
    assert [(name, step) for name, step, _ in load_run(image).checkpoints] == [
        ("last.ckpt", 10), ("step0000005.ckpt", 5), ("step0000010.ckpt", 10)]


@pytest.mark.slow
def test_resumed_run_report_and_wandb_run(resumed_run, tmp_path):
    out, stopped = resumed_run
    log = read_metrics(out / "metrics.jsonl")
    assert [(e["event"], e["step"]) for e in log.events] == [("start", 0), ("preempted", stopped),
                                                              ("resume", stopped), ("end", stopped + 6)]
    steps = log.series["train/loss"][0]
    assert steps == sorted(set(steps)) and steps[-1] > stopped  # one curve, no step twice
    # the second job continued the same W&B run: one id, kept in the run folder, in both offline folders
    run_id = (out / "wandb" / "run-id").read_text().strip()
    segments = sorted((out / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(p.name.endswith("-" + run_id) for p in segments)
    assert [e["wandb_id"] for e in log.events if e["event"] in ("start", "resume")] == [run_id, run_id]

    page = tmp_path / "resumed.html"
    write_html([load_run(out)], page)
    dom = Elements(chromium(page, ARTIFACTS / "resumed.png"))
    assert "resumed 1x, preempted 1x" in page.read_text()
    assert {"loss", "lr", "grad_norm", "throughput"} <= {a["data-plot"] for a in dom.find("img", "plot")}


@pytest.mark.slow
def test_page_size_with_50_sample_grids(runs, tmp_path):
    """50 logged sample steps of 16 noise images (the worst case for PNG) and 1000 logged steps."""
    image = runs["image"]
    run = tmp_path / "long"
    run.mkdir()
    shutil.copy(image / "config.yaml", run / "config.yaml")
    (run / "samples").mkdir()
    rng = np.random.default_rng(0)
    for k in range(50):
        for i in range(16):
            noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(noise).save(run / "samples" / f"step{(k + 1) * 100:07d}_{i:05d}.png")
    with (run / "metrics.jsonl").open("w") as f:
        f.write(json.dumps({"event": "start", "step": 0}) + "\n")
        for s in range(1, 5001, 5):
            f.write(json.dumps({"step": s, "metrics": {"train/loss": 1 / s, "lr-AdamW": 1e-3}}) + "\n")
    loaded = load_run(run)
    assert len(loaded.samples) == 50
    text = build_html([loaded])
    assert len(text.encode()) < PAGE_LIMIT
    shown = Elements(text).find("div", "sample-step")
    assert len(shown) == 12 and shown[0]["data-step"] == "100" and shown[-1]["data-step"] == "5000"


def test_mri_samples_are_three_slices(tmp_path):
    run = tmp_path / "mri"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text("domain: {name: mri}\nmedia: {kind: mri}\n")
    write_nifti(run / "samples" / "step0000010_00000.nii.gz", phantom((16, 20, 12)).astype(np.float32))
    write_nifti(run / "samples" / "step0000010_00001.nii.gz", phantom((16, 20))[..., None].astype(np.float32))
    dom = Elements(build_html([load_run(run)]))
    assert len(dom.find("img", "mri-slices")) == 2
    three = Image.open(io.BytesIO(mri_slices(run / "samples" / "step0000010_00000.nii.gz")))
    one = Image.open(io.BytesIO(mri_slices(run / "samples" / "step0000010_00001.nii.gz")))
    assert three.width > 2 * one.width  # three views side by side; a 2-D sample has one


@pytest.mark.slow
def test_wandb_report_object(runs, resumed_run):
    """Built without a server: its blocks, panels, keys and run filters; never saved."""
    import wandb_workspaces.reports.v2 as wr

    from src.report.wandb_report import build_report, parse_target

    image, audio = runs["image"], runs["audio"]
    loaded = [load_run(image), load_run(audio), load_run(resumed_run[0])]
    report = build_report(loaded, "my-team/diffusion")
    assert (report.entity, report.project) == ("my-team", "diffusion")
    kinds = [type(b).__name__ for b in report.blocks]
    assert kinds == ["H1", "MarkdownBlock", "H1", "PanelGrid", "H1", "H2", "PanelGrid", "H2", "PanelGrid", "H1",
                     "MarkdownBlock"]
    ids = [r.wandb_id for r in loaded]
    assert len(set(ids)) == 3
    curves = report.blocks[3]
    assert curves.runsets[0].filters == f'Metric("ID") in {ids!r}'
    ys = [p.y for p in curves.panels if isinstance(p, wr.LinePlot)]
    assert ["train/loss", "val/loss"] in ys and ["lr-AdamW"] in ys and ["train/grad_norm"] in ys
    assert ["perf/samples_per_sec"] in ys and ["val/mrstft"] in ys
    assert [f"val/loss_bucket{k}" for k in range(5)] in ys
    image_grid, audio_grid = report.blocks[6], report.blocks[8]
    assert image_grid.runsets[0].filters == f'Metric("ID") in {[ids[0], ids[2]]!r}'
    assert audio_grid.runsets[0].filters == f'Metric("ID") in {[ids[1]]!r}'
    assert [p.media_keys for p in image_grid.panels] == [["samples/ema"]]
    assert [p.media_keys for p in audio_grid.panels] == [["samples/ema/audio"], ["samples/ema/spectrogram"]]
    overview = report.blocks[1].text
    assert f"preempted at step {resumed_run[1]}" in overview and "| domain.name | image | audio | image |" in overview
    assert "zero_filled (baseline)" in report.blocks[10].text
    with pytest.raises(ReportError, match="must be ENTITY/PROJECT"):
        parse_target("diffusion")


@pytest.mark.slow
def test_wandb_summary_holds_final_metrics(runs):
    summary = runs["image_summary"]  # the W&B run's summary as train() left it, before the run was closed
    assert summary["trainer/global_step"] == 10 and summary["preempted"] is False
    assert summary["val/loss"] == pytest.approx(runs["image_result"]["metrics"]["val/loss"])


def test_wandb_run_id_is_kept_and_followed(tmp_path):
    from src.metrics_log import wandb_run_id

    first, second = tmp_path / "first", tmp_path / "second"
    made = wandb_run_id(first, None)
    assert (first / "wandb" / "run-id").read_text().strip() == made
    assert wandb_run_id(first, None) == made  # the same folder again (a requeued job): the same run
    (first / "checkpoints").mkdir()
    # resuming another folder's checkpoint with ckpt_path= continues that folder's W&B run
    assert wandb_run_id(second, str(first / "checkpoints" / "last.ckpt")) == made
    assert (second / "wandb" / "run-id").read_text().strip() == made
    assert wandb_run_id(tmp_path / "third", None, given="chosen-id") == "chosen-id"


def test_wandb_report_needs_run_ids(tmp_path, capsys):
    run = tmp_path / "no-logger"
    run.mkdir()
    (run / "config.yaml").write_text("domain: {name: image}\nmedia: {kind: image}\n")
    assert report_main([str(run), "--out", str(tmp_path / "r.html"), "--wandb", "team/project"]) == 2
    err = capsys.readouterr().err
    assert "has no W&B run id" in err and err.count("\n") == 1
    assert (tmp_path / "r.html").is_file()  # the HTML page is written before the W&B step
    assert report_main([str(run), "--out", str(tmp_path / "r.html"), "--wandb", "project-only"]) == 2
    assert "must be ENTITY/PROJECT" in capsys.readouterr().err
