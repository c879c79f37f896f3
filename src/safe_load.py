"""Reading checkpoints without running code from them, whatever the environment says.

Every load passes ``weights_only=True`` explicitly: torch's restricted unpickler then accepts only tensors,
containers, numbers and strings, and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (which in torch 2.14 overrides only
a call that leaves ``weights_only`` unset) cannot switch it off; a probe checks on every load that this torch
still honours it. Sharded (DCP) folders hold two more pickles that DCP itself reads with the full unpickler:
the ``.metadata`` file and the non-tensor ("bytes") entries, such as the optimizer's param_groups.
``SafeFileSystemReader`` and the planners here read both with the restricted unpickler as well, so no
checkpoint the project reads (file or folder, for sampling or for resuming training) can run code.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
from functools import cache
from typing import Any

import torch
import torch.distributed.checkpoint.metadata as md
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._nested_dict import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict


class RefusedPickle(pickle.UnpicklingError):
    """A checkpoint (or one entry of it) that would need more than a weights-only unpickler to load."""


class WeightsOnlyIgnored(RuntimeError):
    """This torch loaded a pickled call although ``weights_only=True`` was passed: nothing is loaded then."""


class _Probe:
    def __reduce__(self):
        return (len, ((),))  # harmless if it ever ran: the full unpickler would turn it into 0


@cache
def _probe_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"probe": _Probe()}, buf)
    return buf.getvalue()


def check_weights_only_honoured() -> None:
    """Raise unless ``torch.load(weights_only=True)`` refuses a pickled call in this process and environment."""
    try:
        torch.load(io.BytesIO(_probe_bytes()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return
    raise WeightsOnlyIgnored(f"torch {torch.__version__} ignores weights_only=True in this environment "
                             "(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD or a patched torch.load)")


def safe_torch_load(f, map_location: Any = "cpu", mmap: bool | None = None) -> Any:
    """``torch.load`` that is weights-only whatever the environment says (the one way the project loads)."""
    check_weights_only_honoured()
    return torch.load(f, map_location=map_location, weights_only=True, mmap=mmap)


# ---- sharded (DCP) folders -------------------------------------------------------------------------------
@cache
def _index_globals() -> dict:
    """What a DCP ``.metadata`` pickle may name: DCP's own index dataclasses, sizes, layouts and paths."""

    allowed = {("torch", "Size"): torch.Size, ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
               ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
               ("collections", "OrderedDict"): collections.OrderedDict}
    allowed.update({("pathlib", c.__name__): c for c in (pathlib.PosixPath, pathlib.PurePosixPath)})
    allowed.update({(md.__name__, c.__name__): c for c in (
        md.Metadata, md.TensorStorageMetadata, md.BytesStorageMetadata, md.ChunkStorageMetadata,
        md.TensorProperties, md.MetadataIndex, md.StorageMeta, md._MEM_FORMAT_ENCODING)})
    return allowed


class _IndexUnpickler(pickle.Unpickler):
    """DCP writes ``.metadata`` with pickle protocol 4, which torch's weights-only unpickler cannot read; this one
    resolves only ``_index_globals`` and torch dtypes (Python's "restricting globals" recipe), so the index can
    build nothing that runs code."""

    def find_class(self, module: str, name: str):
        found = _index_globals().get((module, name))
        if found is None and module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)
        if found is None:
            raise RefusedPickle(f"it names {module}.{name}")
        return found


def read_metadata_file(stream):
    """Unpickle a DCP ``.metadata`` stream with the restricted unpickler above and check it is an index."""

    try:
        metadata = _IndexUnpickler(stream).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
        raise RefusedPickle(f".metadata is not a plain DCP index: {why(e)}") from None
    entries = getattr(metadata, "state_dict_metadata", None)
    if not isinstance(metadata, Metadata) or not isinstance(entries, dict) or not all(
            isinstance(v, (TensorStorageMetadata, BytesStorageMetadata)) for v in entries.values()):
        raise RefusedPickle(".metadata is not a DCP checkpoint index")
    return metadata


def read_metadata(path: str | pathlib.Path):
    """The DCP index of a sharded folder: every entry's shape (tensors) or that it is pickled bytes."""
    with open(pathlib.Path(path) / ".metadata", "rb") as stream:
        return read_metadata_file(stream)


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with a restricted unpickler for ``.metadata`` (its own uses the full pickle)."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as stream:
            metadata = read_metadata_file(stream)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyBytes:
    """``DefaultLoadPlanner.load_bytes`` (which unpickles with the full pickle), weights-only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = safe_torch_load(value)
        except pickle.UnpicklingError as e:
            raise RefusedPickle(f"entry {fqn} holds more than tensors and plain values: {why(e)}") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


class SafeLoadPlanner(_WeightsOnlyBytes, DefaultLoadPlanner):
    """Loads into an existing state dict (resuming training)."""


class SafeEmptyLoadPlanner(_WeightsOnlyBytes, _EmptyStateDictLoadPlanner):
    """Builds the state dict from the folder's own index (consolidating, sampling)."""


def dcp_load(state: dict, path: str | pathlib.Path, planner, no_dist: bool = False) -> None:
    """Fill ``state`` from a sharded folder with the safe reader and ``planner``; DCP's wrapped errors
    (one per rank) come out as the first underlying exception."""
    read_metadata(path)  # a refused index, with its reason, before DCP (which hides its read errors) starts
    try:
        _load_state_dict(state, storage_reader=SafeFileSystemReader(path), planner=planner, no_dist=no_dist)
    except CheckpointException as e:
        raise _first_failure(e) from None


def _first_failure(e: BaseException) -> BaseException:

    while isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    return e


def why(e: BaseException) -> str:
    """The first sentence of the line of ``e`` that says what was refused (torch's messages run long)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    named = [ln for ln in lines if "GLOBAL" in ln or "unrecognized function" in ln or "allowlisted" in ln]
    return (named or lines or [type(e).__name__])[0].split(". ")[0].rstrip(".")
