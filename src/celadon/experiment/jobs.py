"""A study's classifier trainings (arms x seeds) do not depend on each other: run several at once, one process each.

On a CPU the demo's small convolutions use a second thread poorly: on 2 cores, two single-threaded trainings at
once got through 1.25-1.45x what one two-threaded training did, in three paired measurements. So `jobs: 0` (auto)
trains one process per core on a CPU, each with cores/jobs threads given explicitly (never "the free cores", which
two processes starting together would both count as theirs, and a fixed count keeps the bits reproducible). On a
GPU, auto is one training at a time, in this process; `devices` (`celadon run --gpus N`) gives each process a device
of its own. A training resumes from its own checkpoints and its stage is marked complete only when it returned, so
a killed study redoes nothing but the epochs since each training's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from celadon.errors import CeladonError
from celadon.experiment.stages import Stage, StageRunner, stage_key


@dataclasses.dataclass
class TrainingJob:
    config: Any  # celadon.classify.train.TrainConfig, out set by `run_trainings`
    settings: dict  # the stage key's settings
    inputs: list[Stage]
    name: str  # the arm, or "reference"
    seed: int

    @property
    def label(self) -> str:
        return f"train {self.name} (seed {self.seed})"


def job_count(jobs: int, device: str, devices: list[str], pending: int) -> int:
    """Processes to train `pending` classifiers with: one per device in `devices`, else `jobs` when given, else
    one per usable core on a CPU and one (this process) on a GPU."""
    from celadon.cpu import usable_cores
    from celadon.device import resolve_device

    wanted = len(devices) or jobs or (usable_cores() if resolve_device(device) == "cpu" else 1)
    return max(1, min(wanted, pending))


_worker_device: str | None = None  # the device this worker process trains on, when the study names devices


def _start_worker(devices) -> None:
    """Die with the study (Linux): a killed study leaves no training running on into the folder its rerun resumes
    in. Then take a device, when the study names devices."""
    global _worker_device
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned training finishes its own stage, then stops
    _worker_device = devices.get() if devices is not None else None


def fit(config: Any, progress: bool = True) -> dict:
    """Train (or resume) one classifier; the summary its stage records."""
    import torch

    from celadon.classify.train import train

    state = train(config, resume=True, progress=progress)
    return {"best": state["best"], "best_epoch": state["best_epoch"], "epochs": len(state["history"]),
            **state["budget"], "threads": torch.get_num_threads()}  # stage.json records it beside the summary


def _fit_timed(config: Any) -> tuple[dict, float]:
    began = time.perf_counter()
    if _worker_device:
        config = dataclasses.replace(config, device=_worker_device)
    return fit(config, progress=False), time.perf_counter() - began


def run_trainings(stages: StageRunner, jobs: list[TrainingJob], count: int, threads: int,
                  done: Callable[[int, Stage], None], devices: list[str] = ()) -> None:
    """Train every job whose stage is not complete, `count` at once (1: here, in order; with `devices`, one
    process per device); `done(i, stage)` runs in this process as job i's stage completes (at once for a reused
    one), e.g. to evaluate it meanwhile."""
    from celadon.cpu import usable_cores

    if stages.dry:  # a plan: each training once (a twin reads as reused), nothing trained
        for i, job in enumerate(jobs):
            done(i, stages.begin("train", job.settings, job.inputs, job.label))
        return
    begun, first_of, twins = [], {}, {}  # twins: jobs with the same key as a begun one (two arms alike) wait for it
    for i, job in enumerate(jobs):
        key = stage_key("train", job.settings, job.inputs)
        if key in first_of:
            twins.setdefault(first_of[key], []).append(i)
            continue
        stage = stages.begin("train", job.settings, job.inputs, job.label)
        if stage.reused:
            done(i, stage)
        else:
            begun.append((i, stage))
            first_of[key] = i

    def finished(i: int, summary: dict, seconds: float, stage: Stage) -> None:
        stage = stages.finish(stage, jobs[i].settings, jobs[i].inputs, summary, seconds)
        for j in [i, *twins.get(i, [])]:
            done(j, stage)

    count = max(1, min(count, len(begun)))
    if count == 1 and not devices:
        for i, stage in begun:
            began = time.perf_counter()
            summary = fit(dataclasses.replace(jobs[i].config, out=str(stage.path)))
            finished(i, summary, time.perf_counter() - began, stage)
        return
    per_job = threads or max(1, usable_cores() // count)
    where = f"on {', '.join(devices[:count])}" if devices else f"{per_job} thread{'s' if per_job > 1 else ''} each"
    stages.log(f"   {len(begun)} trainings, {count} at once ({where})")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue() if devices else None
    for device in devices[:count]:
        queue.put(device)
    pool = ProcessPoolExecutor(count, mp_context=context, initializer=_start_worker, initargs=(queue,))
    try:
        running: dict[Future, tuple[int, Stage]] = {
            pool.submit(_fit_timed, dataclasses.replace(jobs[i].config, out=str(stage.path), threads=per_job)):
                (i, stage) for i, stage in begun}
        while running:
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in ready:
                i, stage = running.pop(future)
                summary, seconds = future.result()  # a training's CeladonError arrives here as itself
                finished(i, summary, seconds, stage)
    except BrokenProcessPool:
        raise CeladonError(f"{stages.root}: a training process died (killed, or out of memory); run the study again: "
                           "finished trainings are kept and the others resume from their checkpoints") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
