"""Atomic writes and the provenance (resolved config, versions, seed) every run leaves beside its outputs."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import celadon
from celadon.errors import CeladonError

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_TRACKED_PACKAGES = ("numpy", "pillow", "pandas", "torch", "torchvision", "scikit-learn", "diffusers", "peft")


def default_cache_dir(config_dir: str | None = None) -> Path:
    """Where caches live (decoded pixels, image checks): the given folder, $CELADON_CACHE or ~/.cache/celadon."""
    return Path(config_dir or os.environ.get("CELADON_CACHE") or Path.home() / ".cache" / "celadon")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path, names: str | None = None) -> None:
    """Delete the temporary files that killed writers of `path` left (`.NAME.PID.*.tmp` whose process is gone);
    only this writer's pattern (or the file names matching the glob `names`, for writers of numbered files
    such as checkpoints), only in its folder, never a live writer's."""
    for stale in path.parent.glob(f".{names or glob.escape(path.name)}.*.tmp"):
        pid = stale.name.removesuffix(".tmp").rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, then rename: a kill never leaves a half file (and the
    next write of the same file removes what a killed one left)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise CeladonError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make reports unreadable to colleagues
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CeladonError(f"{path}: cannot write ({exc.strerror or exc}); free space or fix permissions, then "
                           "re-run: finished work is kept") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    found = {"celadon": celadon.__version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in _TRACKED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_run_info(out_dir: str | Path, command: str, config: Any, seed: int | None = None,
                   device: str | None = None) -> Path:
    """Record what produced `out_dir`: `run.yaml` with the command, resolved config, seed, versions and, for a
    stage that runs a network, the device it ran on (a GPU's bfloat16 numbers differ from the CPU's)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    config = json.loads(json.dumps(config, default=_jsonable))
    info = {
        "command": command,
        "argv": sys.argv,
        "seed": seed,
        "config": config,
        "versions": versions(),
        **({"device": describe_device(device)} if device else {}),
        "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    path = Path(out_dir) / "run.yaml"
    atomic_write_text(path, yaml.safe_dump(info, sort_keys=False, allow_unicode=True))
    return path


def describe_device(device: str) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H200)`: the device(s) a run used, by name (comma-separated for sharded runs)."""
    import torch

    if "," in device:
        return ",".join(describe_device(part) for part in device.split(","))
    if not device.startswith("cuda"):
        return device
    index = torch.device(device).index or 0
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def read_run_config(path: str | Path, command: str | None = None) -> dict:
    """The resolved config a run recorded in its `run.yaml` (or the folder holding it), checked to come from
    `command` when one is given."""
    path = Path(path)
    path = path / "run.yaml" if path.is_dir() else path
    try:
        info = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CeladonError(f"{path} does not exist; give a run.yaml a celadon command wrote (or its folder)") from None
    except yaml.YAMLError as exc:
        raise CeladonError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise CeladonError(f"{path}: not a celadon run.yaml (no config section)")
    if command and info.get("command") != command:
        raise CeladonError(f"{path} records `celadon {info.get('command')}`, not `celadon {command}`")
    return dict(info["config"])


def load_config(cls: type, folder: str | Path, command: str | None = None):
    """A finished stage's config, read back from its run.yaml: the same dataclass the run was given."""
    from celadon.settings import build

    return build(cls, read_run_config(folder, command), str(folder))


def append_csv_row(path: str | Path, row: dict) -> None:
    """Append one row to a training log CSV (header written with the first row)."""
    import csv

    path = Path(path)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
