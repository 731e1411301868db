"""One device rule for every stage that runs a network: `auto` is the GPU when torch sees one, else the CPU.

An explicit GPU that is not there is a one-line error, never a silent fall-back to hours of CPU work. On a GPU
the classifier runs in bfloat16 autocast (the weights, optimizer and loss stay float32), as timm and the
torchvision reference scripts do with `--amp`.
"""

from __future__ import annotations

import contextlib

import torch

from celadon.errors import CeladonError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | None = "auto") -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; `cpu`, `cuda` and `cuda:N` are checked, not trusted."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    kind, _, index = name.partition(":")
    if kind != "cuda" or (_ and not index.isdigit()):
        raise CeladonError(f"device {device!r}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise CeladonError(f"device {device!r}: torch sees no CUDA GPU on this machine (torch {torch.__version__}); "
                           "use --device cpu, or auto to take a GPU only when there is one")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise CeladonError(f"device {device!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return name


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


def autocast(device: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on a GPU (no loss scaling needed, unlike float16); nothing on the CPU, where float32
    is both exact and, for these small convolutions, as fast."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu(device) else contextlib.nullcontext()
