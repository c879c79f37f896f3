"""Multi-process training: FSDP2 sharding per block, the strategy that applies it, and the SLURM plugin.

``trainer=fsdp`` runs Lightning's ``ModelParallelStrategy`` (FSDP2 ``fully_shard``; unlike Lightning's
``FSDPStrategy`` it also runs on CPU with gloo). The strategy shards whatever the LightningModule hands it
in ``configure_model``: the module gives its backbone and the backbone's EMA copy, and both are cut into
the same units with the same mesh, so each rank holds matching shards and EMA updates stay elementwise.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from src.checkpoint import RESUME_FIX, SHARDED_META, is_sharded, read_checkpoint_file, refusal
from src.errors import ConfigError
from src.safe_load import SafeLoadPlanner, WeightsOnlyIgnored, check_weights_only_honoured, dcp_load

log = logging.getLogger(__name__)

_PRECISIONS = {"auto", "bf16", "fp16", "none"}


def fsdp_units(module: nn.Module) -> list[nn.Module]:
    """The sub-modules that become one FSDP2 unit each (gathered one at a time in forward and backward).

    A backbone can name its own with a ``fsdp_units()`` method; otherwise the elements of every outermost
    ``nn.ModuleList`` are used (transformer blocks, U-Net levels), which is how most networks hold their
    repeated blocks. Parameters outside every unit belong to the root unit.
    """
    own = getattr(module, "fsdp_units", None)
    if callable(own):
        return list(own())
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, nn.ModuleList):
                units.extend(child)
            else:
                visit(child)

    visit(module)
    return units


def mixed_precision_policy(name: str, device: torch.device):
    """FSDP2 mixed precision: parameters gathered and computed in bf16/fp16, gradients reduced in fp32."""
    if name not in _PRECISIONS:
        raise ConfigError(f"trainer.strategy.mixed_precision must be one of {sorted(_PRECISIONS)}, "
                         f"got '{name}'.")
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "none"
    if name == "none":
        return MixedPrecisionPolicy()
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, output_dtype=torch.float32)


def shard(module: nn.Module, mesh, mp_policy=None, reshard_after_forward: bool = True,
          activation_checkpointing: bool = False) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to every unit of ``module`` and then to ``module`` itself (idempotent)."""
    if isinstance(module, FSDPModule):
        return module
    units = fsdp_units(module)
    if activation_checkpointing and units:
        wanted = set(map(id, units))
        apply_activation_checkpointing(module, check_fn=lambda m: id(m) in wanted)
        units = [m for m in module.modules() if isinstance(m, CheckpointWrapper)]
    kwargs = dict(mesh=mesh, mp_policy=mp_policy or MixedPrecisionPolicy(),
                  reshard_after_forward=reshard_after_forward)
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(module, **kwargs)
    return module


def load_sharded(path: Path, module: nn.Module, optimizers: list, strict: bool = True) -> dict[str, Any]:
    """Lightning's sharded resume (``lightning_fabric.strategies.model_parallel._load_checkpoint``) with every
    read weights-only: DCP's own reader and planner unpickle the index and the non-tensor entries (the
    optimizer's param_groups) with the full pickle, the safe ones in ``src.safe_load`` do not."""
    try:
        weights = {"state_dict": get_model_state_dict(module)}
        dcp_load(weights, path, SafeLoadPlanner())
        module.load_state_dict(weights["state_dict"], strict=strict)
        for i, optimizer in enumerate(optimizers):
            state = {f"optimizer_{i}": get_optimizer_state_dict(module, optimizer)}
            dcp_load(state, path, SafeLoadPlanner())
            set_optimizer_state_dict(module, optimizer, optim_state_dict=state[f"optimizer_{i}"],
                                     options=StateDictOptions(cpu_offload=True))
    except (pickle.UnpicklingError, WeightsOnlyIgnored, EOFError, OSError) as e:
        raise refusal(path, e, RESUME_FIX) from None
    return read_checkpoint_file(path / SHARDED_META, fix=RESUME_FIX)


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` for data-parallel sharding only (FSDP2 over all ranks, no tensor parallel).

    ``shard_module`` is what ``DiffusionModule.configure_model`` calls. Distributed checkpoints (a folder of
    per-rank shards plus ``meta.pt``) are written to a temporary folder and renamed, so an interrupted save
    never leaves a half-written ``last.ckpt``; they are read back weights-only (``load_sharded``).
    """

    strategy_name = "fsdp2"

    def __init__(self, mixed_precision: str = "auto", activation_checkpointing: bool = False,
                 reshard_after_forward: bool = True, save_distributed_checkpoint: bool = True,
                 process_group_backend: str | None = None, timeout_minutes: float = 30.0):
        if mixed_precision not in _PRECISIONS:
            raise ConfigError(f"trainer.strategy.mixed_precision must be one of {sorted(_PRECISIONS)}, "
                             f"got '{mixed_precision}'.")
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend,
                         timeout=timedelta(minutes=timeout_minutes))
        self.mixed_precision = mixed_precision
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # every rank holds one data-parallel shard: a (world, 1) mesh, not Lightning's (nodes, gpus) default
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard_module(self, module: nn.Module, trainable: bool = True) -> nn.Module:
        """Shard ``module`` over the data-parallel mesh; the frozen EMA copy skips activation checkpoints."""
        return shard(module, self.device_mesh["data_parallel"],
                     mp_policy=mixed_precision_policy(self.mixed_precision, self.root_device),
                     reshard_after_forward=self.reshard_after_forward,
                     activation_checkpointing=self.activation_checkpointing and trainable)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        # weights-only whatever `weights_only` or the environment say
        path = Path(self.broadcast(str(checkpoint_path)))
        if is_sharded(path):
            return load_sharded(path, self.model, self.optimizers, strict=self.lightning_module.strict_loading)
        check_weights_only_honoured()
        return super().load_checkpoint(path, weights_only=True)  # one file: Lightning's explicit weights-only load

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()
        if self.is_global_zero:
            if path.is_dir():
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
            elif path.exists():
                path.unlink()
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()


def build_strategy(spec: Any):
    """``trainer.strategy`` from the config: a Lightning name ("auto", "ddp") or ``{name: fsdp2, ...}``."""
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    name = spec.pop("name", None)
    if name == "fsdp2":
        try:
            return FSDP2Strategy(**spec)
        except TypeError as e:
            raise ConfigError(f"Bad option under trainer.strategy for fsdp2: {e}.") from None
    if name == "ddp":
        return DDPStrategy(**spec)
    raise ConfigError(f"Unknown trainer.strategy.name '{name}'; use fsdp2 or ddp, or a Lightning name.")


def cluster_plugins() -> list:
    """Under ``srun``: Lightning's SLURM environment minus its in-signal-handler save (src/preemption.py)."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []
