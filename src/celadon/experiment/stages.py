"""Content-addressed stages: each stage's folder is named by a hash of its settings and of the stages it
reads, so a re-run reuses every stage whose inputs did not change and redoes exactly the ones that did.

A stage is complete when its `stage.json` exists (written last, atomically). A folder without it is a stage
that was interrupted: the stage runs again in the same folder, and the stages that can resume (training,
LoRA, generation) pick up where they stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celadon.runinfo import versions, write_json


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stage_key(kind: str, settings: Any, inputs: list[Stage]) -> str:
    text = json.dumps({"kind": kind, "settings": _canonical(settings), "inputs": [s.key for s in inputs]},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _moved(summary: dict, old_root: str | None, new_root: str) -> dict:
    """Paths a stage recorded, rebased when the whole study folder was moved or copied since."""
    if not old_root or old_root == new_root:
        return summary
    return {k: new_root + v[len(old_root):] if isinstance(v, str) and v.startswith(old_root + "/") else v
            for k, v in summary.items()}


def _torch_threads() -> int | None:
    """torch's intra-op thread count in this process, where torch is loaded (stages that ran no network: None)."""
    import sys

    return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None


@dataclass
class Stage:
    kind: str
    key: str
    path: Path
    label: str = ""
    reused: bool = False
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    settings: Any = None  # what its key hashes (a plan reads them: epochs, steps, plan sizes)
    inputs: list[str] = field(default_factory=list)  # "<kind>-<key>" of the stages it reads
    planned: bool = False  # a dry run's stage that would run (nothing was computed)


class Pending(dict):
    """A planned stage's outputs in a dry run: every name reads as a placeholder path inside its folder."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def __missing__(self, name: str) -> str:
        return str(self.path / f"<{name}>")

    def get(self, name: str, default: Any = None) -> Any:
        return self[name]


class StageRunner:
    """Runs stages under `root/stages/<kind>-<key>/`, records which ran and which were reused. With `dry`, it
    runs nothing and writes nothing: each stage is reused when finished, else planned (`Stage.planned`), and
    the history is the study's plan."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print, dry: bool = False):
        self.root = Path(root).resolve()  # summaries hold absolute paths, valid from any working directory
        self.log = log
        self.dry = dry
        self.history: list[Stage] = []

    def run(self, kind: str, settings: Any, inputs: list[Stage], work: Callable[[Path], dict | None],
            label: str | None = None) -> Stage:
        """`work(folder)` produces the stage's outputs in `folder` and may return a small summary dict."""
        stage = self.begin(kind, settings, inputs, label)
        if stage.reused or stage.planned:
            return stage
        began = time.perf_counter()
        summary = work(stage.path) or {}
        return self.finish(stage, settings, inputs, summary, time.perf_counter() - began)

    def begin(self, kind: str, settings: Any, inputs: list[Stage], label: str | None = None) -> Stage:
        """The stage's folder: reused (and recorded) when complete, else created for `finish` to complete, here
        or once a worker process has done the work."""
        key = stage_key(kind, settings, inputs)
        path = self.root / "stages" / f"{kind}-{key}"
        marker = path / "stage.json"
        label = label or kind
        names = [f"{s.kind}-{s.key}" for s in inputs]
        if marker.exists():
            info = json.loads(marker.read_text(encoding="utf-8"))
            summary = _moved(info.get("summary") or {}, info.get("root"), str(self.root))
            stage = Stage(kind, key, path, label, reused=True, info=summary, settings=settings, inputs=names)
            self.log(f"== {label}: reused ({path.name})")
            self.history.append(stage)
            return stage
        if self.dry:
            earlier = next((s for s in self.history if s.kind == kind and s.key == key), None)
            stage = Stage(kind, key, path, label, reused=earlier is not None, info=Pending(path),
                          settings=settings, inputs=names, planned=earlier is None)
            self.history.append(stage)
            return stage
        self.log(f"== {label}")
        path.mkdir(parents=True, exist_ok=True)
        return Stage(kind, key, path, label, settings=settings, inputs=names)

    def finish(self, stage: Stage, settings: Any, inputs: list[Stage], summary: dict, seconds: float) -> Stage:
        """Mark a begun stage complete (stage.json, written last and atomically) and record it, with the torch
        thread count it ran with (a worker process reports its own in the summary's `threads`)."""
        summary = dict(summary)
        threads = summary.pop("threads", None) or _torch_threads()
        write_json(stage.path / "stage.json", {
            "kind": stage.kind, "key": stage.key, "root": str(self.root), "settings": _canonical(settings),
            "inputs": [f"{s.kind}-{s.key}" for s in inputs], "seconds": round(seconds, 2), "threads": threads,
            "summary": summary, "versions": versions()})
        stage = dataclasses.replace(stage, seconds=seconds, info=summary)
        self.log(f"   {stage.label}: {seconds:.1f} s")
        self.history.append(stage)
        return stage

    def ran(self) -> list[str]:
        return [f"{s.kind}-{s.key}" for s in self.history if not s.reused]

    def plan(self) -> list[Stage]:
        """A dry run's stages, each once, in the order the study would reach them."""
        seen: dict[tuple[str, str], Stage] = {}
        for stage in self.history:
            seen.setdefault((stage.kind, stage.key), stage)
        return list(seen.values())
