"""How many threads torch should use: the cores this process may run on that other processes are not busy on.

OpenMP threads spin while they wait for each other; with more threads than free cores they spin against the
other work (measured here: a training step 2.4x slower with 2 threads than with 1 while one other process was
busy on one of the 2 cores). A passive wait policy avoids the spinning but costs 28% when the cores are free,
so celadon sizes the thread pool instead. An explicit thread count is always used as given.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path


def _runnable_elsewhere() -> int:
    """Threads of other processes that are running or ready to run now (state R in /proc)."""
    me, count = os.getpid(), 0
    for stat in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the thread ended while we looked
            continue
        if int(stat.parts[2]) != me and text[text.rfind(")") + 2] == "R":
            count += 1
    return count


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_cores(samples: int = 5, interval: float = 0.02) -> int:
    """Usable cores minus the median number of other runnable threads over a few snapshots (at least 1)."""
    if not Path("/proc/self/stat").exists():
        return usable_cores()
    busy = []
    for i in range(samples):
        busy.append(_runnable_elsewhere())
        if i + 1 < samples:
            time.sleep(interval)
    return max(1, usable_cores() - int(statistics.median(busy)))


def resolve_threads(requested: int) -> int:
    """`requested` when given (> 0), else the free cores."""
    return requested if requested > 0 else free_cores()


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count to `threads`, or (0) to the free cores; returns the count."""
    import torch

    count = resolve_threads(threads)
    torch.set_num_threads(count)
    return count
