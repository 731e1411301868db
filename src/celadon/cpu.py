"""How many threads torch uses: by default every core this process may run on, whatever else is running.

The thread count changes a CPU computation's rounding (matrix products split their sums by thread), so a count
taken from the machine's load made the same study give other numbers when something else was busy at its start
(a reference trained with 1 thread instead of 2 differed from its first epoch on). So `threads: 0` means the
usable cores, a number fixed by the machine, and the count a stage used is recorded in its `stage.json`.

The price is speed on a busy machine: OpenMP threads spin while they wait for each other, and with more threads
than free cores they spin against the other work (a training step 2.4x slower with 2 threads than with 1 while
another process was busy on one of the 2 cores). celadon says so once when it sees the cores taken; an explicit
`--threads N` is always used as given.
"""

from __future__ import annotations

import os
import statistics
import sys
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


_warned = False


def resolve_threads(requested: int) -> int:
    """`requested` when given (> 0), else every usable core (see above), with a note when others are busy."""
    global _warned
    if requested > 0:
        return requested
    cores = usable_cores()
    free = free_cores()
    if free < cores and not _warned:
        _warned = True
        print(f"note: other processes are busy on {cores - free} of this machine's {cores} cores; celadon still "
              f"uses {cores} threads so that its numbers do not depend on the load (--threads {free} runs faster "
              "now, with results that differ in their last bits)", file=sys.stderr)
    return cores


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count to `threads`, or (0) to every usable core; returns the count."""
    import torch

    count = resolve_threads(threads)
    torch.set_num_threads(count)
    return count
