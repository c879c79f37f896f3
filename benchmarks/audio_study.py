"""Audio on real speech: experiment=audio_quickstart through the real CLI, then a scorer.

    python benchmarks/audio_study.py --representation mel-image --steps 1600 --data /tmp/channel_words \
        --work /tmp/audio_mel_img --json docs/studies/data/audio_mel_image.json \
        --figure docs/studies/data/audio_mel_image.png

1. The class-labelled speech set of benchmarks/audio_data.py (built into --data when missing).
2. ``--representation``: ``mel-image`` (the preset's own: log-mel images, the 2D U-Net, no stage 1), ``mel`` (log-mel
   frames for the 1D U-Net) or ``autoencoder`` (``python -m src.train stage=autoencoder domain=audio
   experiment=audio_quickstart``, then stage 2 on its latents with the 1D U-Net), each stage-2 run with
   ``cond=class`` (one model: classifier-free guidance training also gives unconditional draws).
3. ``python -m src.sample`` unconditional (no label) and class-conditional (``label=all guidance=W``).
4. The scorer (benchmarks/audio_scorer.py), trained on part of the real clips: accuracy on the requested class,
   mean max-probability, per-clip and marginal class entropy, Frechet distance on its hidden features;
   held-out real clips as the ceiling, white noise as the floor.
5. Sampling speed in seconds of audio per CPU-second, in this process, one thread.
CPU time of every child is measured (resource.getrusage), not wall time; one thread throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.audio_data import build  # noqa: E402
from benchmarks.audio_scorer import Scorer, frechet, read_folder, split_real  # noqa: E402
from src.latent.networks import build_autoencoder  # noqa: E402
from src.latent.space import read_autoencoder  # noqa: E402
from src.latent.stage import module_from_checkpoint  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], log: Path) -> float:
    """Run a CLI with one thread; its CPU seconds (itself and its workers)."""
    before = children_cpu()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT, env=ENV).returncode
    if rc != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed with exit code {rc}; see {log}")
    return children_cpu() - before


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "load_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "python": platform.python_version()}


def sampling_speed(ckpt: Path, num: int, steps: int) -> dict:
    """Seconds of audio per CPU-second of module.sample (decode included), one thread, in this process."""
    torch.set_num_threads(1)
    module, ck = module_from_checkpoint(ckpt)
    rate = int(ck["run_config"]["datamodule"]["sample_rate"])
    module.sample(2, steps=2, seed=0)  # warm-up
    t0 = time.process_time()
    x = module.sample(num, steps=steps, seed=0, batch_size=num)
    cpu = time.process_time() - t0
    seconds = num * x.shape[-1] / rate
    return {"clips": num, "steps": steps, "audio_seconds": seconds, "cpu_seconds": cpu,
            "audio_seconds_per_cpu_second": seconds / cpu}


@torch.no_grad()
def autoencode(ckpt: Path, waves: np.ndarray, batch: int = 16) -> np.ndarray:
    """The stage-1 autoencoder's reconstructions (EMA weights, posterior mean): the ceiling of stage 2."""
    arch, weights, _ = read_autoencoder(ckpt)
    net = build_autoencoder(arch).eval()
    net.load_state_dict(weights)
    x = torch.from_numpy(waves)[:, None]
    return torch.cat([net.reconstruct(x[i:i + batch]) for i in range(0, len(x), batch)])[:, 0].clamp(-1, 1).numpy()


def mel_griffin_lim(waves: np.ndarray, n_mels: int, hop: int, sample_rate: int = 16000, iters: int = 32) -> np.ndarray:
    """Each clip through a log-mel spectrogram and back by Griffin-Lim: the ceiling of a mel representation
    without a trained vocoder (what diffusing mel spectrograms could reach at best with this inversion)."""
    import torch
    import torchaudio

    n_fft = 4 * hop
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=1.0)
    inv = torchaudio.transforms.InverseMelScale(n_fft // 2 + 1, n_mels, sample_rate)
    gl = torchaudio.transforms.GriffinLim(n_fft=n_fft, hop_length=hop, power=1.0, n_iter=iters)
    torch.manual_seed(0)
    with torch.no_grad():
        x = torch.from_numpy(waves)
        out = gl(inv(mel(x)))
    out = out[..., : waves.shape[-1]]
    out = torch.nn.functional.pad(out, (0, waves.shape[-1] - out.shape[-1]))
    return out.numpy().astype(np.float32)


def spectrogram_figure(path: Path, classes: list[str], real: np.ndarray, real_labels: np.ndarray,
                       fake: np.ndarray, fake_labels: np.ndarray, sample_rate: int = 16000) -> Path:
    """Log-mel spectrograms (64 bands, hop 128) of one held-out real clip and two conditional samples per class:
    one column per class, rows real / sample / sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchaudio.transforms import MelSpectrogram

    mel = MelSpectrogram(sample_rate, n_fft=512, hop_length=128, n_mels=64)
    rows = [("real", real, real_labels, 0), ("sample", fake, fake_labels, 0), ("sample", fake, fake_labels, 1)]
    fig, axes = plt.subplots(len(rows), len(classes), figsize=(1.6 * len(classes), 1.5 * len(rows)), squeeze=False)
    for c, name in enumerate(classes):
        for r, (kind, waves, labels, k) in enumerate(rows):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            idx = np.flatnonzero(labels == c)
            if len(idx) > k:
                spec = mel(torch.from_numpy(waves[idx[k]]).float()).clamp(min=1e-5).log().numpy()
                ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=-11.5, vmax=3)
            if r == 0:
                ax.set_title(name, fontsize=7)
            if c == 0:
                ax.set_ylabel(kind, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def score_set(scorer: Scorer, waves: np.ndarray, labels: np.ndarray | None, ref_feats: np.ndarray) -> dict:
    probs, feats = scorer.predict(waves)
    out = {"n": len(waves), "mean_max_prob": float(probs.max(1).mean()),
           "entropy_per_clip": float(-(probs * np.log(probs + 1e-12)).sum(1).mean()),
           "entropy_marginal": float(-(lambda p: (p * np.log(p + 1e-12)).sum())(np.bincount(
               probs.argmax(1), minlength=probs.shape[1]) / len(probs))),
           "frechet": frechet(feats, ref_feats)}
    if labels is not None:
        out["accuracy"] = float((probs.argmax(1) == labels).mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("/tmp/channel_words"),
                   help="the class folders of benchmarks/audio_data.py (built there when missing)")
    p.add_argument("--work", type=Path, default=Path("/tmp/audio_study"), help="run folders, samples and logs")
    p.add_argument("--json", type=Path, default=None, help="write the results here (optional)")
    p.add_argument("--per-class", type=int, default=14, help="conditional samples per class")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of the conditional draws")
    p.add_argument("--representation", choices=["autoencoder", "mel", "mel-image"], default="autoencoder",
                   help="what stage 2 diffuses: the preset's waveform autoencoder (trained first), "
                        "latent.autoencoder=mel (log-mel spectrograms, Griffin-Lim; no stage 1) as a sequence for "
                        "the 1D U-Net, or mel-image (latent.mel.layout=image, 64 bands, hop 256: a 64x64 image "
                        "for the 2D U-Net)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides for the stage-2 run (e.g. latent.mel.preset=tiny)")
    p.add_argument("--ae-steps", type=int, default=None, help="override the preset's stage-1 steps")
    p.add_argument("--steps", type=int, default=None, help="override the preset's stage-2 steps")
    p.add_argument("--figure", type=Path, default=None,
                   help="write log-mel spectrograms of real clips and conditional samples per class here (PNG)")
    p.add_argument("--skip-train", action="store_true", help="reuse both runs under --work")
    p.add_argument("--skip-stage1", action="store_true", help="reuse the stage-1 run under --work")
    p.add_argument("--skip-sampling", action="store_true",
                   help="score the samples already under --work (CPU times of earlier steps from --json)")
    p.add_argument("--stage1-cpu", type=float, default=None,
                   help="CPU seconds of a reused stage-1 run, measured outside (recorded as such)")
    p.add_argument("--stage2-cpu", type=float, default=None, help="the same for a reused stage-2 run")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = machine()
    if not args.data.is_dir():
        build(args.data)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    common = ["domain=audio", "experiment=audio_quickstart", f"datamodule.path={args.data}", "logger=none",
              "threads=1", "trainer.enable_progress_bar=false"]
    ae, ldm = work / "ae", work / "ldm"
    cpu: dict[str, float] = {}
    if args.skip_sampling and args.json and args.json.is_file():
        cpu.update(json.loads(args.json.read_text())["cpu_seconds"])
    if args.stage1_cpu is not None:
        cpu["stage1"] = args.stage1_cpu
    if args.stage2_cpu is not None:
        cpu["stage2"] = args.stage2_cpu
    mel = args.representation.startswith("mel")
    if not args.skip_train and not args.skip_stage1 and not mel:
        cpu["stage1"] = run(["-m", "src.train", "stage=autoencoder", *common, f"paths.output_dir={ae}",
                             *([f"trainer.max_steps={args.ae_steps}"] if args.ae_steps else [])], work / "stage1.log")
        print(f"stage 1: {cpu['stage1'] / 60:.1f} CPU-min", flush=True)
    # the preset's own stage 2 is mel-image; the other two representations are set explicitly (the autoencoder
    # route at the 700 steps it was measured with unless --steps says otherwise)
    space = ["latent.autoencoder=mel"] if mel else [f"latent.autoencoder={ae}/checkpoints/last.ckpt",
                                                     *([] if args.steps else ["trainer.max_steps=700"])]
    if args.representation == "mel-image":
        space += ["latent.mel.layout=image", "latent.mel.hop=256", "latent.mel.n_mels=64"]
    elif args.representation == "mel":
        space += ["latent.mel.layout=sequence", "latent.mel.hop=128", "latent.mel.n_mels=64"]
    if not args.skip_train:
        cpu["stage2"] = run(["-m", "src.train", *common, "cond=class", *space, *args.set,
                             f"paths.output_dir={ldm}", *([f"trainer.max_steps={args.steps}"] if args.steps else [])],
                            work / "stage2.log")
        print(f"stage 2: {cpu['stage2'] / 60:.1f} CPU-min", flush=True)
    ckpt = ldm / "checkpoints" / "last.ckpt"
    classes = sorted(d.name for d in args.data.iterdir() if d.is_dir())
    n_cond = args.per_class * len(classes)
    if not args.skip_sampling:
        cpu["sample_cond"] = run(["-m", "src.sample", f"ckpt={ckpt}", "label=all", "progress=off",
                                  f"guidance={args.guidance}", f"num_samples={args.per_class}",
                                  f"out={work / 'cond'}", "seed=1"], work / "cond.log")
        cpu["sample_uncond"] = run(["-m", "src.sample", f"ckpt={ckpt}", f"num_samples={n_cond}", "progress=off",
                                    f"out={work / 'uncond'}", "seed=2"], work / "uncond.log")
    t0 = time.process_time()
    waves, labels, groups = read_folder(args.data, classes)
    train_idx, held_idx = split_real(groups)
    scorer = Scorer(len(classes)).fit(waves[train_idx], labels[train_idx])
    _, ref = scorer.predict(waves[train_idx])
    cond = sorted((work / "cond").glob("sample_c*.wav"))
    cond_waves = np.stack([sf.read(f, dtype="float32")[0] for f in cond])
    cond_labels = np.array([int(f.name.split("_c")[1][:3]) for f in cond])
    uncond_waves = np.stack([sf.read(f, dtype="float32")[0] for f in sorted((work / "uncond").glob("*.wav"))])
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((len(held_idx), waves.shape[1])).astype(np.float32) * 0.3
    results = {"real_heldout": score_set(scorer, waves[held_idx], labels[held_idx], ref),
               "latent_conditional": score_set(scorer, cond_waves, cond_labels, ref),
               "latent_unconditional": score_set(scorer, uncond_waves, None, ref),
               **({} if mel else {"autoencoder_reconstruction": score_set(
                   scorer, autoencode(ae / "checkpoints" / "last.ckpt", waves[held_idx]), labels[held_idx], ref)}),
               "mel64_hop128_griffin_lim": score_set(
                   scorer, mel_griffin_lim(waves[held_idx], 64, 128), labels[held_idx], ref),
               "mel80_hop256_griffin_lim": score_set(
                   scorer, mel_griffin_lim(waves[held_idx], 80, 256), labels[held_idx], ref),
               "white_noise": score_set(scorer, noise, rng.integers(0, len(classes), len(noise)), ref)}
    cpu["scorer"] = time.process_time() - t0
    if args.figure:
        spectrogram_figure(args.figure, classes, waves[held_idx], labels[held_idx], cond_waves, cond_labels)
    speed = sampling_speed(ckpt, num=16, steps=32)
    real_acc = results["real_heldout"]["accuracy"]
    summary = {"conditional_accuracy_vs_real": results["latent_conditional"]["accuracy"] / max(real_acc, 1e-9),
               "frechet_conditional_vs_real": results["latent_conditional"]["frechet"]
               / max(results["real_heldout"]["frechet"], 1e-9),
               "training_cpu_minutes": (cpu.get("stage1", 0) + cpu.get("stage2", 0)) / 60}
    report = {"representation": args.representation, "overrides": args.set,
              "machine": {**info, "load_end": os.getloadavg()}, "classes": classes, "cpu_seconds": cpu,
              "scores": results, "summary": summary, "sampling_speed": speed, "guidance": args.guidance,
              "clips": {"real": len(waves), "scorer_train": len(train_idx), "heldout": len(held_idx)}}
    print(f"{'set':24s} {'acc':>6s} {'maxp':>6s} {'H/clip':>7s} {'H(marg)':>8s} {'Frechet':>9s}")
    for name, r in results.items():
        print(f"{name:24s} {r.get('accuracy', float('nan')):6.3f} {r['mean_max_prob']:6.3f} "
              f"{r['entropy_per_clip']:7.3f} {r['entropy_marginal']:8.3f} {r['frechet']:9.2f}")
    print(json.dumps({"summary": summary, "sampling_speed": speed, "cpu_seconds": cpu}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
