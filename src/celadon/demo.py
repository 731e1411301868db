"""`celadon demo`: the pipeline on the embedded default, stage by stage, with wall time per stage.

Today: the data stage (render -> validate -> analyze -> split + leakage -> augment -> weights -> contact
sheet), the classifier (train the real-only baseline -> evaluate on test -> predict) and synthesis
(seven-tier selection using the baseline's confusion pairs -> captions -> LoRA on the shipped tiny model ->
Dataset B plan -> generation with and without the LoRA -> QC of both -> the paper's Table 6). Later
stages append themselves here, so the README's first command always runs everything there is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celadon.errors import CeladonError


@dataclass
class DemoRunConfig:
    out: Path = Path("runs/demo")
    n: int = 3000
    size: int = 128
    seed: int = 0
    workers: int = 2
    image_size: int = 96
    epochs: int = 8
    backbone: str = "efficientnet_lite0"
    lora_steps: int = 400
    plan_total: int = 0  # 0: the paper's Dataset B share (10 : 90)
    model: str = "tiny"


def _test_images(splits: Path, n: int) -> list[str]:
    """A few test-split image paths, to show what `celadon predict` prints."""
    import pandas as pd

    frame = pd.read_csv(splits)
    return [os.path.normpath(splits.parent / p) for p in frame.loc[frame["split"] == "test", "path"].head(n)]


LORA_SETTINGS = ("--rank", "8", "--lr", "1e-3", "--batch-size", "16", "--train-text-encoder")


def _negative(config: DemoRunConfig) -> list[str]:
    """The paper's negative prompt is SD 1.5 vocabulary; the tiny model never saw those words, and as the
    CFG baseline they only add noise, so with it the plan's negative prompt is empty."""
    return ["--negative-prompt", ""] if config.model == "tiny" else []


def _generate(cli, config: DemoRunConfig, out: Path, name: str) -> Callable[[], int]:
    lora = ["--lora", str(out / "lora")] if name == "lora" else []
    return lambda: cli(["synth", "generate", str(out / "plan" / "plan.csv"), "--out", str(out / f"gen-{name}"),
                        "--model", config.model, *lora, "--quiet"])


def _qc(cli, out: Path, model: Path, splits: Path, name: str) -> Callable[[], int]:
    return lambda: cli(["synth", "qc", str(out / f"gen-{name}" / "generated.csv"), "--real", str(splits), "--out",
                        str(out / f"qc-{name}"), "--model", str(model), "--quiet"])


def run_demo(config: DemoRunConfig) -> dict[str, float]:
    """Run every stage into `config.out`; re-running reuses the rendered images."""
    from celadon.cli import main as cli

    out = config.out
    data, manifest, splits = out / "data", out / "data" / "manifest.csv", out / "split" / "splits.csv"
    model, cache = out / "model", out / "cache"
    stages: list[tuple[str, Callable[[], int]]] = [
        ("render embedded dataset", lambda: cli(["data", "make-demo", str(data), "--n", str(config.n), "--size",
                                                 str(config.size), "--seed", str(config.seed), "--workers",
                                                 str(config.workers), "--quiet"])),
        ("validate", lambda: cli(["data", "validate", str(manifest), "--quiet", "--json",
                                  str(out / "validate.json")])),
        ("analyze imbalance", lambda: cli(["data", "analyze", str(manifest), "--out", str(out / "analysis"),
                                           "--quiet"])),
        ("adaptive split + leakage", lambda: cli(["data", "split", str(manifest), "--out", str(out / "split"),
                                                  "--seed", str(config.seed), "--quiet"])),
        ("threshold augmentation", lambda: cli(["data", "augment", str(splits), "--out", str(out / "augment"),
                                                "--seed", str(config.seed), "--quiet"])),
        ("class weights + sampling", lambda: cli(["data", "weights", str(splits), "--out",
                                                  str(out / "weights.json"), "--quiet"])),
        ("contact sheet", lambda: cli(["data", "contact-sheet", str(manifest), "--out",
                                       str(out / "contact_sheet.png"), "--quiet"])),
        ("train baseline (real only)", lambda: cli(["train", str(splits), "--out", str(model), "--backbone",
                                                    config.backbone, "--image-size", str(config.image_size),
                                                    "--epochs", str(config.epochs), "--seed", str(config.seed),
                                                    "--cache-dir", str(cache), "--resume", "--quiet"])),
        ("evaluate on test", lambda: cli(["evaluate", str(model), str(splits), "--cache-dir", str(cache),
                                          "--quiet"])),
        ("predict", lambda: cli(["predict", str(model), *_test_images(splits, 3), "--top-k", "2", "--quiet"])),
        ("select LoRA training set", lambda: cli(["synth", "select", str(out / "augment" / "augmented.csv"),
                                                  "--out", str(out / "lora-select"), "--metrics",
                                                  str(model / "eval-test" / "metrics.json"), "--quiet"])),
        ("caption LoRA training set", lambda: cli(["synth", "caption", str(out / "lora-select" / "selection.csv"),
                                                   "--out", str(out / "lora-set"), "--quiet"])),
        ("train LoRA", lambda: cli(["synth", "train-lora", str(out / "lora-set"), "--out", str(out / "lora"),
                                    "--model", config.model, "--steps", str(config.lora_steps), "--quiet",
                                    *LORA_SETTINGS])),
        ("plan generation (Dataset B)", lambda: cli(["synth", "plan", str(splits), "--out", str(out / "plan"),
                                                     "--preset", "B", "--total", str(config.plan_total), "--metrics",
                                                     str(model / "eval-test" / "metrics.json"), "--quiet",
                                                     *_negative(config)])),
        *[(f"generate ({name})", _generate(cli, config, out, name)) for name in ("vanilla", "lora")],
        *[(f"QC ({name})", _qc(cli, out, model, splits, name)) for name in ("vanilla", "lora")],
        ("compare vanilla vs LoRA", lambda: cli(["synth", "compare", f"vanilla={out / 'qc-vanilla'}",
                                                 f"lora={out / 'qc-lora'}", "--csv", str(out / "table6.csv")])),
    ]
    timings: dict[str, float] = {}
    for name, stage in stages:
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        code = stage()
        timings[name] = time.perf_counter() - start
        if code not in (0, 1):  # validate exits 1 on data errors: reported above, the demo goes on
            raise CeladonError(f"demo stage '{name}' failed (exit {code}); see the message above")
    print("\n== wall time per stage")
    for name, seconds in timings.items():
        print(f"  {name:<28}{seconds:7.1f} s")
    print(f"  {'total':<28}{sum(timings.values()):7.1f} s")
    print(f"demo outputs are in {out.resolve()}")
    return timings
