"""Training throughput of this framework against a hand-written loop (and diffusers, for images).

    python -m benchmarks.train_throughput domain=image [hydra overrides...] [--steps 20 --warmup 5 --repeats 3
        --pipelines framework,loop,diffusers,framework_diffusers --json out.json --peak-tflops 989
        --device cuda|cpu --precision bf16|fp16|fp32 --tiny --in-process]

Every pipeline uses the same backbone config, batch size, optimizer (AdamW) and precision:
  framework            the `python -m src.train` path: Lightning Trainer, DiffusionModule, EMA, datamodule
  loop                 a minimal PyTorch loop over the same backbone, objective, EMA and in-memory batches
  diffusers            (images) diffusers' UNet2DModel + DDPMScheduler, written like its unconditional example
  framework_diffusers  (images) the same UNet2DModel as a backbone inside this framework
Each pipeline runs in its own subprocess (clean peak memory; `--in-process`: one after the other in this process,
which saves the start-up time and keeps GPU peaks apart, while the CPU peak RSS then only grows). Warm-up steps
are excluded; the step time is the median over all timed steps of all repetitions, with min and max. MFU uses
`--peak-tflops`, else the device's bf16/fp16 peak from `benchmarks.common.PEAK_TFLOPS`. `trainer=ddp` or
`trainer=fsdp` runs the framework under that strategy with one device (world size 1; no FLOP count then).
`--tiny` shrinks every size (tiny backbone, small batch and data, 1 + 3 steps) so the same code runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from .common import TINY_TRAIN, machine, peak_tflops, precision_name, summary, use_compile_backend, write_json

PIPELINES = ("framework", "loop", "diffusers", "framework_diffusers")
PRECISIONS = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}
ACCELERATORS = {"cuda": "gpu", "cpu": "cpu"}


def cli_overrides(args, overrides: list[str]) -> list[str]:
    """Hydra overrides implied by --tiny, --device and --precision; an explicit override of the same key wins."""
    extra = []
    if args.tiny:
        extra += TINY_TRAIN["common"] + TINY_TRAIN[domain_of(overrides)]
    if args.device:
        extra.append(f"trainer.accelerator={ACCELERATORS[args.device]}")
    if args.precision:
        extra.append(f"trainer.precision={PRECISIONS[args.precision]}")
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [*overrides, *(o for o in extra if o.split("=", 1)[0] not in given)]


def domain_of(overrides: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("domain=")), "image")


# ---- shared pieces ---------------------------------------------------------------------------------------
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from src.config import register_resolvers

    register_resolvers()
    cfg_dir = os.path.join(os.path.dirname(__file__), "..", "configs")
    with initialize_config_dir(config_dir=os.path.abspath(cfg_dir), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=["logger=none", *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def step_flops(backbone, x: torch.Tensor, loss_fn) -> int:
    """FLOPs of one forward + backward of the training loss, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_fn(backbone, x).backward()
    backbone.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def autocast(cfg, device):
    precision = str(cfg.trainer.precision)
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def device_of(cfg) -> torch.device:
    acc = str(cfg.trainer.accelerator)
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def in_memory_batches(cfg, n: int) -> list[dict]:
    from src.config import to_plain
    from src.domains import build_datamodule

    dm = build_datamodule(to_plain(cfg.datamodule), seed=cfg.seed)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            return batches
    return batches


# ---- pipelines --------------------------------------------------------------------------------------------
def run_framework(cfg, args, backbone_override: dict | None = None) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import SingleDeviceStrategy

    from src.config import to_plain
    from src.distributed import build_strategy
    from src.domains import build_datamodule
    from src.module import DiffusionModule
    from src.train import resolve_precision

    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync(module.device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(module.device)
            if batch_idx >= args.warmup:
                times.append(time.perf_counter() - self.t0)

    flops, peak = None, 0.0
    trainer_cfg = to_plain(cfg.trainer)
    for _ in range(args.repeats):
        dm = build_datamodule(to_plain(cfg.datamodule), seed=cfg.seed)
        module = DiffusionModule(backbone=backbone_override or to_plain(cfg.backbone),
                                 diffusion=to_plain(cfg.diffusion), data_shape=dm.data_shape,
                                 optim=to_plain(cfg.optim), ema=to_plain(cfg.ema), seed=cfg.seed,
                                 perf=to_plain(cfg.get("perf")))
        # one device: under trainer=ddp/fsdp this measures the strategy's own cost at world size 1
        trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=resolve_precision(trainer_cfg),
                             strategy=build_strategy(trainer_cfg.get("strategy", "auto")),
                             max_steps=args.warmup + args.steps, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=[Timer()],
                             use_distributed_sampler=False)
        trainer.fit(module, datamodule=dm)
        peak = max(peak, peak_memory_mb(module.device))  # before the FLOP count's fp32 pass
        # the counter needs eager, unsharded modules; the loop pipeline counts the same backbone
        countable = isinstance(trainer.strategy, SingleDeviceStrategy) and not module.perf["compile"]
        if flops is None and countable:
            flops = _module_flops(module, cfg, dm.data_shape)
    return {"step_times": times, "flops_per_step": flops, "batch_size": int(cfg.datamodule.batch_size),
            "peak_memory_mb": peak, "strategy": type(trainer.strategy).__name__}


def _module_flops(module, cfg, data_shape) -> int:
    device = module.device
    x = torch.randn(int(cfg.datamodule.batch_size), *data_shape, device=device)
    g = torch.Generator(device=device).manual_seed(0)

    def loss_fn(net, x):
        u = torch.rand(x.shape[0], generator=g, device=device)
        return module.objective.loss(net, x, u, torch.randn_like(x)).mean()

    return step_flops(module.backbone, x, loss_fn)


def timed_steps(args, device, batches, net, loss_fn, opt, ema_update, clip: float) -> list[float]:
    """Warm-up plus timed optimizer steps of a plain loop (loss, backward, clip, AdamW, EMA); the timed ones."""
    times = []
    for i in range(args.warmup + args.steps):
        x = batches[i % len(batches)]
        sync(device)
        t0 = time.perf_counter()
        loss_fn(net, x).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def run_plain(cfg, args, build) -> dict:
    """Time a plain loop: ``build(device)`` -> ``(net, loss_fn, optimizer, ema_update)``, fresh per repetition."""
    device = device_of(cfg)
    batches = [b["x"].to(device) for b in in_memory_batches(cfg, 8)]
    times: list[float] = []
    flops = None
    for _ in range(args.repeats):
        torch.manual_seed(cfg.seed)
        net, loss_fn, opt, ema_update = build(device)
        if flops is None:
            flops = step_flops(net, batches[0], loss_fn)
        times += timed_steps(args, device, batches, net, loss_fn, opt, ema_update, cfg.trainer.gradient_clip_val)
    return {"step_times": times, "flops_per_step": flops, "batch_size": int(cfg.datamodule.batch_size)}


def run_loop(cfg, args) -> dict:
    """The floor: same backbone, objective, AdamW, clipping and EMA, no framework around them."""
    from src.backbones import build_backbone
    from src.config import to_plain
    from src.diffusion import build_objective
    from src.ema import EMA

    def build(device):
        backbone = build_backbone(to_plain(cfg.backbone)).to(device)
        objective = build_objective(to_plain(cfg.diffusion))
        ema = EMA(backbone, **{k: v for k, v in to_plain(cfg.ema).items() if k != "phema"})  # one plain EMA
        opt = torch.optim.AdamW(backbone.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                weight_decay=cfg.optim.weight_decay)

        def loss_fn(net, x):
            u = torch.rand(x.shape[0], device=device)
            with autocast(cfg, device):
                return objective.loss(net, x, u, torch.randn_like(x)).mean()

        return backbone, loss_fn, opt, lambda: ema.update(backbone)

    return run_plain(cfg, args, build)


def diffusers_backbone_cfg(cfg) -> dict:
    from src.backbones.unet import PRESETS

    preset = PRESETS[cfg.backbone.preset]
    return {"name": "diffusers_unet2d", "in_channels": int(cfg.backbone.in_channels),
            "sample_size": int(cfg.datamodule.resolution), "block_out_channels": list(preset["channels"]),
            "attention_levels": list(preset["attention_levels"]), "layers_per_block": preset["num_res_blocks"],
            "norm_num_groups": preset["norm_num_groups"]}


def run_diffusers(cfg, args) -> dict:
    """Written the way diffusers' examples/unconditional_image_generation/train_unconditional.py does it."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from src.backbones import build_backbone

    def build(device):
        model = build_backbone(diffusers_backbone_cfg(cfg)).net.to(device)
        scheduler = DDPMScheduler(num_train_timesteps=1000)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                weight_decay=cfg.optim.weight_decay)
        ema = EMAModel(model.parameters(), decay=cfg.ema.decay, use_ema_warmup=True, inv_gamma=1.0, power=0.75)

        def loss_fn(net, clean):
            noise = torch.randn_like(clean)
            t = torch.randint(0, 1000, (clean.shape[0],), device=device).long()
            noisy = scheduler.add_noise(clean, noise, t)
            with autocast(cfg, device):
                pred = net(noisy, t).sample
            return F.mse_loss(pred.float(), noise.float())

        return model, loss_fn, opt, lambda: ema.step(model.parameters())

    return run_plain(cfg, args, build)


def run_one(pipeline: str, overrides: list[str], args) -> dict:
    from src.config import to_plain
    from src.train import resolve_precision

    cfg = compose(overrides)
    from src import threads

    # every pipeline gets the thread pool src.train would give it (threads=N / OMP_NUM_THREADS override)
    n_threads = threads.apply(cfg.get("threads", "auto"), cfg.trainer.get("devices"))
    device = device_of(cfg)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if pipeline == "framework":
        res = run_framework(cfg, args)
    elif pipeline == "loop":
        res = run_loop(cfg, args)
    elif pipeline == "diffusers":
        res = run_diffusers(cfg, args)
    else:
        res = run_framework(cfg, args, backbone_override=diffusers_backbone_cfg(cfg))
    res.setdefault("peak_memory_mb", peak_memory_mb(device))
    res["device"] = str(device)
    res["threads"] = n_threads
    res["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    res["precision"] = precision_name(resolve_precision(to_plain(cfg.trainer)))  # "auto" as the Trainer got it
    return res


def report(pipeline: str, res: dict, peak: float | None) -> dict:
    st = summary(res["step_times"])
    peak = peak or peak_tflops(res.get("device_name", ""), res.get("precision", "fp32"))
    row = {"pipeline": pipeline, "step_time_s": st, "samples_per_s": res["batch_size"] / st["median"],
           "peak_memory_mb": res["peak_memory_mb"], "flops_per_step": res["flops_per_step"],
           "device": res.get("device_name"), "precision": res.get("precision"), "peak_tflops": peak,
           "strategy": res.get("strategy"), "threads": res.get("threads")}
    achieved = res["flops_per_step"] / st["median"] / 1e12 if res["flops_per_step"] else None
    row["achieved_tflops"] = achieved
    row["mfu"] = achieved / peak if (achieved and peak) else None
    return row


def run_in_subprocess(pipeline: str, overrides: list[str], args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", f"--only={pipeline}", f"--steps={args.steps}",
           f"--warmup={args.warmup}", f"--repeats={args.repeats}", *compile_backend_flag(args), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(line[7:])


def compile_backend_flag(args) -> list[str]:
    return [f"--compile-backend={args.compile_backend}"] if args.compile_backend else []


def main() -> None:
    ap = argparse.ArgumentParser(description="Training throughput: framework vs hand-written loop vs diffusers.")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repetition (default 20; --tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --tiny 1)")
    ap.add_argument("--repeats", type=int, default=None, help="repetitions (default 3; --tiny 1)")
    ap.add_argument("--pipelines", default=None, help=f"comma list from {','.join(PIPELINES)}")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for the precision in use, for MFU (default: benchmarks.common.PEAK_TFLOPS)")
    ap.add_argument("--device", choices=sorted(ACCELERATORS), default=None, help="sets trainer.accelerator")
    ap.add_argument("--precision", choices=sorted(PRECISIONS), default=None, help="sets trainer.precision")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: the same code paths in seconds on a CPU")
    ap.add_argument("--in-process", action="store_true", help="run the pipelines one after the other here")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend for perf.compile=true")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: run one pipeline in this process
    args, overrides = ap.parse_known_args()
    bad = [o for o in overrides if o.startswith("--")]
    if bad:
        ap.error(f"unknown option {bad[0]}")
    for name, full, tiny in (("steps", 20, 3), ("warmup", 5, 1), ("repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.compile_backend:
        use_compile_backend(args.compile_backend)

    if args.only:  # the child of run_in_subprocess: overrides are already complete
        print("RESULT " + json.dumps(run_one(args.only, overrides, args)))
        return

    overrides = cli_overrides(args, overrides)
    domain = domain_of(overrides)
    pipelines = args.pipelines.split(",") if args.pipelines else (
        list(PIPELINES) if domain == "image" else ["framework", "loop"])
    rows, skipped, failed = [], {}, {}
    for p in pipelines:
        if p not in PIPELINES:
            ap.error(f"unknown pipeline {p}; choose from {', '.join(PIPELINES)}")
        if p in ("diffusers", "framework_diffusers"):
            try:
                import diffusers  # noqa: F401
            except ImportError:
                skipped[p] = "diffusers is not installed"
                print(f"skipping {p}: diffusers is not installed (pip install -e '.[bench]')")
                continue
        try:
            res = run_one(p, overrides, args) if args.in_process else run_in_subprocess(p, overrides, args)
        except Exception as e:  # one pipeline's failure is a result to report, not the end of the others
            failed[p] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            print(f"{p} failed: {e}")
            continue
        rows.append(report(p, res, args.peak_tflops))

    print(f"\n{domain}: {' '.join(overrides)}  ({machine()})")
    print(f"{'pipeline':22s} {'samples/s':>10s} {'step ms (median [min-max])':>30s} {'peak MB':>9s} "
          f"{'TFLOP/s':>8s} {'MFU':>6s}")
    base = next((r for r in rows if r["pipeline"] == "loop"), None)
    for r in rows:
        st = r["step_time_s"]
        span = f"{st['median'] * 1e3:.1f} [{st['min'] * 1e3:.1f}-{st['max'] * 1e3:.1f}]"
        tf = f"{r['achieved_tflops']:.3f}" if r["achieved_tflops"] else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        print(f"{r['pipeline']:22s} {r['samples_per_s']:10.1f} {span:>30s} {r['peak_memory_mb']:9.0f} {tf:>8s} "
              f"{mfu:>6s}")
    if base:
        for r in rows:
            if r is not base:
                ratio = r["step_time_s"]["median"] / base["step_time_s"]["median"]
                print(f"{r['pipeline']} step time = {100 * (ratio - 1):+.1f}% vs loop")
    write_json(args.json, {"machine": machine(), "domain": domain, "overrides": overrides, "rows": rows,
                           "skipped": skipped, "failed": failed})


if __name__ == "__main__":
    main()
