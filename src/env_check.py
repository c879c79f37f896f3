"""Check that the installed torch and torchaudio load together; ``python -m src.env_check`` (run by setup).

torchaudio's compiled extension is built against one torch release: a pair that does not match fails deep
inside ``import torchaudio`` with an undefined symbol. ``import_torchaudio`` turns that into one sentence.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import version

import torch

from .errors import ConfigError, ProjectError

LOCKED_PAIR = "torch 2.14.1 with torchaudio 2.11.1 (or torch 2.11.0 with torchaudio 2.11.0)"


class EnvironmentMismatch(ProjectError):
    """The installed packages do not work together; the message names them and the fix."""


def resolve_device(device, key: str = "--device"):
    """``auto``: the GPU when there is one, else the CPU; a CUDA device asked for on a machine without one is a
    ConfigError naming ``key`` (instead of a failure deep inside torch)."""
    sep = "" if key.endswith("=") else " "
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}{sep}{device} was requested but no CUDA GPU is available here; use "
                          f"{key}{sep}cpu.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"{key}{sep}{device} is not a device; use auto, cpu or cuda[:N].") from None


def native_cpu_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AMX or AVX512-BF16), where bf16 autocast is faster
    than fp32; elsewhere oneDNN emulates it and it is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and (
            torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN or these probes
        return False


def import_torchaudio():
    """``import torchaudio``, or one sentence naming both versions and the fix when its extension fails."""
    try:
        return importlib.import_module("torchaudio")
    except (OSError, ImportError) as e:
        try:
            ta = version("torchaudio")
        except Exception:  # noqa: BLE001 - only for the message
            ta = "not installed"
        raise EnvironmentMismatch(
            f"torchaudio {ta} does not load beside torch {torch.__version__} ({str(e).splitlines()[0][:120]}); "
            f"install a matching pair, {LOCKED_PAIR}: run `bash scripts/setup.sh`, which installs "
            "requirements.lock.") from None


def main() -> None:
    try:
        ta = import_torchaudio()
    except EnvironmentMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    x = torch.randn(1, 1600)
    ta.functional.resample(x, 16000, 8000)
    print(f"setup: torch {torch.__version__} and torchaudio {ta.__version__} load and run on "
          f"{'CUDA' if torch.cuda.is_available() else 'CPU'}")


if __name__ == "__main__":
    main()
