"""`celadon bench cli`: how long a command takes to start, and how much memory it needs, as a new process.

The CLI builds a command's flags only when that command runs (`CommandParser`), so `celadon --help` and
`celadon data validate` never import torch. This benchmark holds them to a budget: it runs each command in a
fresh process several times and prints the median wall time and the peak resident memory against the budget,
as ratios (a ratio above 1 is over budget). A test checks the mechanism (no torch imported); the budget is
measured here, not in a timed test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 1.0
BUDGET_MB = 300.0


def _small_manifest(folder: Path, rows: int = 8) -> Path:
    """A valid manifest of `rows` small distinct JPEGs (rendered noise), the command's typical first use."""
    import numpy as np
    from PIL import Image

    for i in range(rows):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((64, 64), Image.BICUBIC).save(folder / f"img{i}.jpg", quality=95)
    path = folder / "manifest.csv"
    path.write_text("path,dynasty,kiln,glaze,type\n" + "".join(f"img{i}.jpg,song,longquan,celadon,vase\n"
                                                                for i in range(rows)), encoding="utf-8")
    return path


def _run_once(argv: list[str], cache: Path) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one fresh `python -m celadon.cli ARGV` process."""
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "celadon.cli", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=os.environ | {"CELADON_CACHE": str(cache)})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"celadon {' '.join(argv)} exited with {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss / 1024  # KB on Linux


def bench_cli(repeats: int = 5) -> dict:
    """Median start time and peak memory of `celadon --help` and `celadon data validate` on a small manifest."""
    with tempfile.TemporaryDirectory(prefix="celadon-bench-cli-") as folder:
        manifest = _small_manifest(Path(folder))
        commands = {"celadon --help": ["--help"], "celadon data validate (8 rows)": ["data", "validate", "--quiet",
                                                                                    str(manifest)]}
        result = {}
        for name, argv in commands.items():
            runs = [_run_once(argv, Path(folder) / "cache") for _ in range(repeats)]
            seconds = statistics.median(s for s, _ in runs)
            megabytes = max(m for _, m in runs)
            result[name] = {"seconds": round(seconds, 3), "peak_mb": round(megabytes, 1),
                            "time_vs_budget": round(seconds / BUDGET_SECONDS, 2),
                            "memory_vs_budget": round(megabytes / BUDGET_MB, 2)}
    return result
