"""Pretrained starting points (``init.from=PATH``): a checkpoint of this framework, a diffusers model folder or
a MONAI bundle folder, read without running code from them and loaded into the run's backbone.

``describe`` reads only the source's configuration (which backbone it needs, what it predicts) before the model
is built; ``load_pretrained`` reads the weights into the built backbone, reports loaded / missing / unexpected /
mismatched keys in one table and refuses a start that would leave the backbone mostly random.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from src.checkpoint import CheckpointError, read_checkpoint_file
from src.errors import ConfigError, one_of
from src.safe_load import safe_torch_load, why

log = logging.getLogger(__name__)

DIFFUSERS_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
MONAI_NETS = ("DiffusionModelUNet", "AutoencoderKL")
OBJECTIVES = ("auto", "eps", "v", "x0", "retrain")
MOSTLY_RANDOM = 0.5  # below this share of the backbone's parameters loaded, a start is refused (init.strict)
FIX_STRICT = "set init.strict=false to start from the weights that fit anyway"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_init(init: dict | None) -> dict:
    """The ``init`` config with defaults, its values checked (before any file is read)."""
    init = {"from": None, "strict": True, "use_ema": True, "objective": "auto", **(init or {})}
    one_of(init["objective"], "init.objective", OBJECTIVES)
    for key in ("strict", "use_ema"):
        if not isinstance(init[key], bool):
            raise ConfigError(f"init.{key} must be true or false, got {init[key]!r}.")
    return init


# ---- what a source is (configuration only) ----------------------------------------------------------------
def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"init.from: {path} cannot be read as JSON ({e}); pass an intact model folder.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"init.from: {path} is not a JSON object; pass an intact model folder.")
    return data


def _diffusers_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"init.from: {folder} has config.json but no diffusion_pytorch_model.safetensors; save the "
                      "model with save_pretrained into that folder.")


def _prediction_near(folder: Path) -> str | None:
    """A diffusers pipeline keeps the parametrisation in ``../scheduler/scheduler_config.json``."""
    cfg = folder.parent / "scheduler" / "scheduler_config.json"
    pred = _json(cfg).get("prediction_type") if cfg.is_file() else None
    return {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(pred)


def _resolve(value, raw: dict, where: Path, depth: int = 0):
    """A bundle value with its ``@key`` references replaced. MONAI's ConfigParser would also evaluate ``$``
    expressions, which are Python code, so this reads references only and refuses expressions."""
    if isinstance(value, list):
        return [_resolve(v, raw, where, depth) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, raw, where, depth) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("$"):
        raise ConfigError(f"init.from: {where} sets a network argument with a Python expression ({value[:40]}), "
                          "which would run code; replace it by its value.")
    if isinstance(value, str) and value.startswith("@") and depth < 20:
        node = raw
        for part in value[1:].replace("#", "::").split("::"):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise ConfigError(f"init.from: {where} refers to {value}, which it does not define; fix the "
                                  "bundle's config.")
        return _resolve(node, raw, where, depth + 1)
    return value


def _monai_bundle(folder: Path) -> tuple[str, dict, Path, str | None]:
    """(network class, its keyword arguments, weights file, prediction) of a MONAI bundle folder."""
    weights = next((folder / "models" / n for n in ("model.pt", "model.ts") if (folder / "models" / n).is_file()),
                   None)
    if weights is None:
        raise ConfigError(f"init.from: MONAI bundle {folder} has no models/model.pt or models/model.ts; pass a "
                          "bundle folder with its weights.")
    found, prediction, named = None, None, set()
    for cfg_file in sorted((folder / "configs").glob("*.json")):
        raw = _json(cfg_file)
        for value in raw.values():
            if not isinstance(value, dict) or "_target_" not in value:
                continue
            target = str(value["_target_"])
            named.add(target)
            if target.split(".")[-1] in MONAI_NETS and found is None:
                found = (target.split(".")[-1],
                         {k: _resolve(v, raw, cfg_file) for k, v in value.items() if not k.startswith("_")})
            if isinstance(value.get("prediction_type"), str):
                prediction = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(value["prediction_type"])
    if found is None:
        raise ConfigError(f"init.from: MONAI bundle {folder} defines no {' or '.join(MONAI_NETS)} in configs/*.json "
                          f"(found {', '.join(sorted(named)) or 'no networks'}); only those networks can start a "
                          "run.")
    return found[0], found[1], weights, prediction


def describe(path: str | Path, backbone: dict, stage: str = "diffusion") -> dict:
    """What ``init.from=path`` is: ``kind``, weights ``file``, the ``backbone`` config to build (the run's
    channels kept), and the source's ``prediction`` / ``diffusion`` where it says. Reads no weights."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"init.from={path} does not exist; pass a .ckpt of src.train, a diffusers model folder "
                          "or a MONAI bundle folder.")
    channels = {k: backbone[k] for k in ("in_channels", "out_channels") if backbone.get(k) is not None}
    if path.is_file():
        ckpt = read_checkpoint_file(path, mmap=True, fix="pass a checkpoint written by src.train as init.from")
        hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
        if not isinstance(hp, dict) or "backbone" not in hp or "state_dict" not in ckpt:
            raise CheckpointError(f"init.from={path} is not a diffusion checkpoint of src.train (no backbone in its "
                                  "hyper_parameters); pass a diffusion run's .ckpt.")
        if ((hp.get("finetune") or {}).get("lora") or {}).get("rank"):
            raise ConfigError(f"init.from={path} holds only LoRA adapters; start from its base model "
                              f"({(hp.get('init') or {}).get('from')}) or from a fully trained checkpoint.")
        theirs = {k: v for k, v in hp["backbone"].items() if k not in ("in_channels", "out_channels")}
        return {"kind": "checkpoint", "file": str(path), "backbone": {**theirs, **channels},
                "diffusion": hp.get("diffusion"), "prediction": None}
    if (path / "config.json").is_file():
        cfg = _json(path / "config.json")
        cls = cfg.get("_class_name")
        if cls not in DIFFUSERS_CLASSES:
            raise ConfigError(f"init.from: {path / 'config.json'} describes a diffusers {cls or 'unknown class'}, "
                              f"which cannot be the backbone; pass a {' or '.join(DIFFUSERS_CLASSES)} folder.")
        weights = _diffusers_weights(path)
        config = {k: v for k, v in cfg.items() if not k.startswith("_")}
        return {"kind": "diffusers", "file": str(weights), "prediction": _prediction_near(path), "diffusion": None,
                "backbone": {"name": "diffusers_unet2d", "class_name": cls, "config": config}}
    if (path / "configs").is_dir():
        name, kwargs, weights, prediction = _monai_bundle(path)
        if name == "AutoencoderKL":
            raise ConfigError(f"init.from: MONAI bundle {path} holds an AutoencoderKL, which is not a diffusion "
                              "backbone; start a diffusion run from a DiffusionModelUNet bundle (autoencoder "
                              "weights are not loaded by init.from yet).")
        spatial = kwargs.pop("spatial_dims", backbone.get("spatial_dims", 2))
        kwargs = {k: v for k, v in kwargs.items() if k not in ("in_channels", "out_channels")}
        return {"kind": "monai", "file": str(weights), "prediction": prediction, "diffusion": None,
                "backbone": {"name": "unet", "spatial_dims": spatial, **channels, **kwargs}}
    raise ConfigError(f"init.from={path} is a folder without config.json (diffusers) or configs/ (MONAI bundle); "
                      "pass one of those or a .ckpt file of src.train.")


# ---- the parametrisation ------------------------------------------------------------------------------------
def check_objective(init: dict, source: dict, diffusion: dict) -> str:
    """How the source's parametrisation maps onto this run's ``diffusion`` config: a short note, or a
    ConfigError for combinations that cannot map (``init.objective=retrain`` takes the weights anyway)."""
    choice = init.get("objective", "auto")
    if choice == "retrain":
        return "retrain: weights used as a starting point, the parametrisation is learned anew"
    family, pred = diffusion.get("family", "ddpm"), diffusion.get("prediction", "eps")
    fix = ("set init.objective=retrain to use the weights as a starting point for this objective anyway (it "
           "relearns the parametrisation)")
    theirs = source.get("diffusion")
    if theirs and choice == "auto":  # a checkpoint of this framework says exactly what it learned
        same = ["family"] + (["prediction", "schedule", "num_timesteps"] if family == "ddpm" else [])
        differ = [k for k in same if theirs.get(k, "eps" if k == "prediction" else None) != diffusion.get(k, "eps"
                                                                                             if k == "prediction"
                                                                                             else None)]
        if differ:
            k = differ[0]
            raise ConfigError(f"init.from={init['from']} was trained with diffusion.{k}={theirs.get(k)} but this run "
                              f"has diffusion.{k}={diffusion.get(k)}: its outputs mean something else here; use the "
                              f"same diffusion settings, or {fix}.")
        return f"same objective ({family}{', ' + pred if family == 'ddpm' else ''})"
    source_pred = source.get("prediction") if choice == "auto" else choice
    assumed = source_pred is None
    source_pred = source_pred or "eps"
    if family != "ddpm" or pred != source_pred:
        run = f"diffusion={family}" + (f" with prediction={pred}" if family == "ddpm" else "")
        raise ConfigError(f"init.from={init['from']} is a discrete-time DDPM model predicting {source_pred}"
                          f"{' (assumed: the folder does not say; set init.objective=eps|v|x0)' if assumed else ''}, "
                          f"which does not map onto {run}; train with diffusion=ddpm diffusion.prediction="
                          f"{source_pred}, or {fix}.")
    return f"ddpm, {pred} prediction{' (assumed: the folder does not say)' if assumed else ''}"


# ---- the weights ------------------------------------------------------------------------------------------
def _read_tensors(file: Path, what: str) -> dict:
    """A flat name -> tensor dict from safetensors or a weights-only torch file (a pickle needing code refused)."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file  # optional heavy dependency: safetensors

        try:
            return load_file(str(file))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own untyped errors for damaged files
            raise ConfigError(f"init.from: {file} is not a readable safetensors file ({e}); save it again.") from None
    if file.suffix == ".ts":
        raise ConfigError(f"init.from: {file} is TorchScript, which is code; export the bundle's weights as "
                          "models/model.pt (a state dict) and pass the bundle again.")
    try:
        state = safe_torch_load(file)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"init.from: {file} cannot be loaded safely ({why(e)}): only a full unpickler, which can "
                          f"run code, would load it; save {what} as a plain state dict or safetensors.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConfigError(f"init.from: {file} cannot be read ({why(e)}); it is truncated or not a PyTorch "
                          "file.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"init.from: {file} holds no plain state dict of tensors; save {what} with "
                          "torch.save(model.state_dict(), ...).")
    return state


def source_state(init: dict) -> tuple[dict, str]:
    """The source's weights keyed as the backbone's own ``state_dict`` (``net.…``), and which copy was read."""
    file, kind = Path(init["file"]), init["kind"]
    if kind == "checkpoint":
        ckpt = read_checkpoint_file(file, fix="pass a checkpoint written by src.train as init.from")
        state = ckpt["state_dict"]
        prefix = "ema.module." if init.get("use_ema", True) and any(k.startswith("ema.module.") for k in state) \
            else "backbone."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, \
            ("EMA weights" if prefix.startswith("ema") else "raw weights")
    state = _read_tensors(file, "the model")
    return {f"net.{k}": v for k, v in state.items()}, kind


def _old_monai_layout(backbone: nn.Module, state: dict) -> dict | None:
    """MONAI's own converter for the GenerativeModels key layout (``load_old_state_dict``), run on a copy
    filled with NaN so the keys it did not fill stay recognisable; None when it does not apply."""
    net = getattr(backbone, "net", None)
    if not hasattr(net, "load_old_state_dict"):
        return None
    target = copy.deepcopy(net)
    with torch.no_grad():
        for t in target.state_dict().values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    old = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    try:
        target.load_old_state_dict(old)  # pops what it converts from `old`
    except (KeyError, RuntimeError):
        return None
    converted = {f"net.{k}": v for k, v in target.state_dict().items()
                 if not (v.is_floating_point() and bool(torch.isnan(v).all()))}
    converted.update({f"net.{k}": v for k, v in old.items()})  # left over: reported as unexpected
    return converted


def match(own: dict, state: dict) -> dict:
    """Names loaded, missing (random), unexpected (unused) and mismatched (shape differs), and the share of the
    backbone's parameters that is loaded."""
    loaded = [k for k in own if k in state and tuple(state[k].shape) == tuple(own[k].shape)]
    mismatched = [k for k in own if k in state and k not in loaded]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    total = sum(v.numel() for v in own.values()) or 1
    share = sum(own[k].numel() for k in loaded) / total
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected, "mismatched": mismatched,
            "share": share}


def report_table(report: dict, source: str) -> str:
    rows = [f"init.from {source}: {report['share']:.1%} of the backbone's parameters loaded"]
    for key in ("loaded", "missing", "unexpected", "mismatched"):
        names = report[key]
        example = "" if key == "loaded" or not names else f"  e.g. {', '.join(names[:2])}"
        rows.append(f"  {key:<11} {len(names):>5} tensors{example}")
    return "\n".join(rows)


def load_pretrained(backbone: nn.Module, init: dict) -> dict:
    """Load ``init``'s weights (``describe``'s record plus the config) into ``backbone``; returns the report."""
    state, copy_read = source_state(init)
    own = backbone.state_dict()
    report = match(own, state)
    if init["kind"] == "monai" and report["share"] < 1.0:
        converted = _old_monai_layout(backbone, state)
        if converted is not None and match(own, converted)["share"] > report["share"]:
            state, copy_read = converted, "monai (GenerativeModels layout, converted by MONAI)"
            report = match(own, state)
    log.info("%s", report_table(report, f"{init['from']} ({copy_read})"))
    if report["share"] < MOSTLY_RANDOM and init.get("strict", True):
        bad = (report["mismatched"] or report["missing"] or ["?"])[0]
        shapes = (f"{tuple(state[bad].shape)} there, {tuple(own[bad].shape)} here" if bad in state
                  else "absent there")
        raise ConfigError(f"init.from={init['from']} fits only {report['share']:.0%} of this backbone's weights "
                          f"(e.g. {bad}: {shapes}), so the model would start mostly random; match the backbone "
                          f"(channels, preset) to the source, or {FIX_STRICT}.")
    backbone.load_state_dict({k: state[k] for k in report["loaded"]}, strict=False)
    return report
