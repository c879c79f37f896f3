"""Quality against network evaluations for every sampler, on an analytic Gaussian-mixture problem.

    python -m benchmarks.sampling [--out docs/studies/data/sampling_quality.png] \
        [--json docs/studies/data/sampling_quality.json]
    python -m benchmarks.sampling --matrix [--denoiser-error 0.05] \
        [--out docs/studies/data/sampling_matrix.png] [--json ...]

The data is a 2-D mixture of 8 Gaussians on a ring; its optimal denoiser is known in closed form, so
the only error left is the sampler's discretisation. Error = sliced Wasserstein-1 distance between
sampled points and exact draws from the mixture (lower is better), against the number of denoiser calls.

``--matrix`` runs every sampler on every objective's own sigma grid (the sampler x objective matrix);
``--denoiser-error E`` adds a smooth, bounded error of size E to the denoiser, as a trained network has,
to show which samplers amplify it.
"""

from __future__ import annotations

import argparse
import math

import torch

from src.diffusion.objectives import DDPMObjective, EDMObjective, FlowMatchingObjective, VEObjective
from src.diffusion.samplers import SAMPLERS

from .common import machine, write_json

K, RADIUS, STD = 8, 2.0, 0.15
ANGLES = torch.arange(K) * 2 * math.pi / K
MEANS = torch.stack([RADIUS * ANGLES.cos(), RADIUS * ANGLES.sin()], 1)


def mixture_denoiser(x, sigma):
    """E[x0 | x] for x = x0 + sigma * eps, x0 from the equal-weight isotropic mixture."""
    s2 = sigma.reshape(-1, 1, 1) ** 2
    diff = x[:, None, :] - MEANS[None]
    logw = -(diff**2).sum(-1, keepdim=True) / (2 * (STD**2 + s2))
    w = torch.softmax(logw, dim=1)
    comp = MEANS[None] + STD**2 / (STD**2 + s2) * diff
    return (w * comp).sum(1)


def exact_samples(n: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, K, (n,), generator=g)
    return MEANS[idx] + STD * torch.randn(n, 2, generator=g)


def sliced_w1(a: torch.Tensor, b: torch.Tensor, projections: int = 64, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(projections, 2, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values
    return float((pa - pb).abs().mean())


def perturbed(den, err: float):
    """The exact denoiser plus a smooth bounded error of size ``err`` (in data units), like a network's."""
    if not err:
        return den
    return lambda x, sigma: den(x, sigma) + err * torch.tanh(x.flip(1) / (1 + sigma.reshape(-1, 1)))


def counting(den):
    calls = {"n": 0}

    def d(x, sigma):
        calls["n"] += 1
        return den(x, sigma)

    return d, calls


# sampler -> (sigma grid for a step count, extra options); each on the grid of the family it belongs to
SETUPS = {
    "ddpm": (lambda n: DDPMObjective("cosine").sampling_sigmas(n), {}),
    "ddim": (lambda n: DDPMObjective("cosine").sampling_sigmas(n), {"eta": 0.0}),
    "euler": (lambda n: FlowMatchingObjective().sampling_sigmas(n), {}),
    "heun": (lambda n: EDMObjective(sigma_max=20.0).sampling_sigmas(n), {}),
    "pc": (lambda n: VEObjective(sigma_max=20.0).sampling_sigmas(n), {"n_corrector": 1}),
    "langevin": (lambda n: VEObjective(sigma_max=20.0).sampling_sigmas(n), {"n_corrector": 3}),
}


def run(steps_list: list[int], n: int = 8000) -> dict:
    g = torch.Generator().manual_seed(0)
    ref = exact_samples(n, g)
    floor = sliced_w1(exact_samples(n, g), ref)
    results = {}
    for name, (grid, opts) in SETUPS.items():
        rows = []
        for steps in steps_list:
            sigmas = grid(steps)
            den, calls = counting(mixture_denoiser)
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(n, 2, generator=gen) * sigmas[0]
            out = SAMPLERS[name](den, x, sigmas, generator=gen, **opts)
            rows.append({"steps": steps, "nfe": calls["n"], "sw1": sliced_w1(out, ref)})
            print(f"{name:9s} steps={steps:4d} nfe={calls['n']:5d} sliced-W1={rows[-1]['sw1']:.4f}")
        results[name] = rows
    print(f"finite-sample floor (two exact draws): {floor:.4f}")
    return {"machine": machine(), "floor": floor, "results": results}


OBJECTIVE_GRIDS = {
    "ddpm": lambda n: DDPMObjective().sampling_sigmas(n),
    "edm": lambda n: EDMObjective().sampling_sigmas(n),
    "flow": lambda n: FlowMatchingObjective().sampling_sigmas(n),
    "ve": lambda n: VEObjective().sampling_sigmas(n),
    # the flow grid as it was, from the training clamp t = 0.9999 (sigma ~ 1e4): kept to show why it moved
    "flow_from_t0.9999": lambda n: FlowMatchingObjective(sigma_max=9999.0).sampling_sigmas(n),
}
MATRIX_OPTIONS = {"pc": {"n_corrector": 1}, "langevin": {"n_corrector": 3}}


def run_matrix(steps_list: list[int], n: int = 4000, denoiser_error: float = 0.0) -> dict:
    """Sliced W1 for every (objective grid, sampler, steps), with the objectives' default grids."""
    g = torch.Generator().manual_seed(0)
    ref = exact_samples(n, g)
    floor = sliced_w1(exact_samples(n, g), ref)
    matrix: dict = {}
    for obj, grid in OBJECTIVE_GRIDS.items():
        matrix[obj] = {}
        for name in SAMPLERS:
            rows = []
            for steps in steps_list:
                sigmas = grid(steps)
                den, calls = counting(perturbed(mixture_denoiser, denoiser_error))
                gen = torch.Generator().manual_seed(1)
                x = torch.randn(n, 2, generator=gen) * sigmas[0]
                out = SAMPLERS[name](den, x, sigmas, generator=gen, **MATRIX_OPTIONS.get(name, {}))
                sw1 = sliced_w1(out, ref) if torch.isfinite(out).all() else float("inf")
                rows.append({"steps": steps, "nfe": calls["n"], "sw1": sw1})
            matrix[obj][name] = rows
            print(f"{obj:5s} {name:13s} " + " ".join(f"{r['nfe']}:{r['sw1']:.3f}" for r in rows))
    print(f"finite-sample floor (two exact draws): {floor:.4f}")
    return {"machine": machine(), "floor": floor, "denoiser_error": denoiser_error, "matrix": matrix}


def plot_matrix(payload: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = list(payload["matrix"])
    fig, axes = plt.subplots(1, len(objs), figsize=(3.6 * len(objs), 3.8), dpi=110, sharey=True)
    for ax, obj in zip(axes, objs):
        for name, rows in payload["matrix"][obj].items():
            pts = [(r["nfe"], min(r["sw1"], 10.0)) for r in rows]  # off-scale (diverged) points drawn at 10
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.axhline(payload["floor"], color="gray", ls="--", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"{obj} grid", ylim=(0.01, 12))
    axes[0].set_ylabel("sliced Wasserstein-1")
    axes[-1].legend(fontsize=7)
    err = payload.get("denoiser_error") or 0
    fig.suptitle("Every sampler on every objective's grid (8-Gaussian ring"
                 + (f", denoiser error {err})" if err else ", exact denoiser)"))
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def plot(payload: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for name, rows in payload["results"].items():
        ax.plot([r["nfe"] for r in rows], [r["sw1"] for r in rows], marker="o", label=name)
    ax.axhline(payload["floor"], color="gray", ls="--", lw=1, label="exact-sample floor")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="sliced Wasserstein-1",
           title="Sampler error on an 8-Gaussian ring (closed-form denoiser)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="4,8,16,32,64,128", help="comma list of sampler step counts")
    ap.add_argument("--samples", type=int, default=8000, help="points drawn per sampler and step count")
    ap.add_argument("--out", default=None, help="plot (default docs/studies/data/sampling_quality.png, or "
                    "docs/studies/data/sampling_matrix.png with --matrix)")
    ap.add_argument("--json", default=None, help="the measured errors as JSON (default beside the plot)")
    ap.add_argument("--matrix", action="store_true", help="every sampler on every objective's grid")
    ap.add_argument("--denoiser-error", type=float, default=0.0, help="relative error added to the analytic denoiser")
    args = ap.parse_args()
    if args.matrix:
        stem = "docs/studies/data/sampling_matrix" + (f"_err{args.denoiser_error:g}" if args.denoiser_error else "")
        payload = run_matrix([int(s) for s in args.steps.split(",")], args.samples, args.denoiser_error)
        write_json(args.json or stem + ".json", payload)
        plot_matrix(payload, args.out or stem + ".png")
        return
    args.out, args.json = (args.out or "docs/studies/data/sampling_quality.png",
                           args.json or "docs/studies/data/sampling_quality.json")
    payload = run([int(s) for s in args.steps.split(",")], args.samples)
    write_json(args.json, payload)
    plot(payload, args.out)


if __name__ == "__main__":
    main()
