"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A training checkpoint is `ckpt/epoch_NNN.{model,state}.safetensors` + `epoch_NNN.state.json`, then
`ckpt/latest.json` is atomically pointed at it, and only then older epochs are removed. A SIGKILL at any
moment leaves `latest.json` naming a complete epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_bytes, atomic_write_text, remove_stale_temps

_TENSOR = "__tensor__"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Replace every tensor in a nested state (optimizer, scheduler) by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, tensors, f"{prefix}.k{i}"), flatten_state(v, tensors, f"{prefix}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unflatten_state(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load(Path(path).read_bytes())
    except FileNotFoundError:
        raise CeladonError(f"{path} is missing; the checkpoint is incomplete") from None
    except Exception as exc:
        raise CeladonError(f"{path}: not a readable safetensors file ({exc})") from None


def save_checkpoint(folder: Path, epoch: int, model: torch.nn.Module | dict[str, torch.Tensor], state: dict[str, Any],
                    kind: str = "epoch") -> None:
    """Write epoch (or step) `epoch`: weights (a module's, or a dict such as LoRA weights only) + training
    state; point `latest.json` at it, prune older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}_{epoch:05d}" if kind != "epoch" else f"epoch_{epoch:03d}"
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    save_tensors(folder / f"{stem}.model.safetensors", weights)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, tensors)
    save_tensors(folder / f"{stem}.state.safetensors", tensors)
    atomic_write_text(folder / f"{stem}.state.json", json.dumps(skeleton))
    atomic_write_text(folder / "latest.json", json.dumps({"epoch": epoch, "stem": stem}))
    for old in folder.glob(f"{kind}_*"):
        if not old.name.startswith(stem + "."):
            old.unlink(missing_ok=True)
    remove_stale_temps(folder / stem, f"{kind}_*")  # a killed write of an older checkpoint's files


def load_checkpoint(folder: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """(epoch, model state dict, training state) of the latest complete checkpoint, or None."""
    pointer = folder / "latest.json"
    if not pointer.exists():
        return None
    latest = json.loads(pointer.read_text())
    stem = latest["stem"]
    model = load_tensors(folder / f"{stem}.model.safetensors")
    state = unflatten_state(json.loads((folder / f"{stem}.state.json").read_text()),
                            load_tensors(folder / f"{stem}.state.safetensors"))
    return int(latest["epoch"]), model, state
