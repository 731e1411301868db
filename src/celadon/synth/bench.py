"""`celadon bench lora` and `celadon bench generate`: rates of celadon's synthesis paths against the
plain diffusers recipes on the same data and settings, printed as ratios (benchmarks, not tests).

- lora: steps/s with cached latents + text embeddings vs the `train_text_to_image_lora.py` recipe, which
  decodes, VAE-encodes and text-encodes every batch (`LoraConfig.cache=False` runs exactly that path);
- generate: images/s of `celadon synth generate` (batched, per-item seeds, LoRA fused) vs a plain
  `StableDiffusionPipeline` loop, one prompt per call with the LoRA applied unfused at the same scale.

`--model sd15-random` (SD 1.5's architecture, random weights) measures both at real size without the weights.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from celadon.synth.generate import GenerateConfig, _call_kwargs, generate, prepare_generator_pipeline, read_plan
from celadon.synth.lora import LoraConfig, train_lora
from celadon.synth.pipeline import benchmarking


def bench_lora(config: LoraConfig, steps: int = 20, warmup: int = 3) -> dict:
    """Both paths train `warmup + steps` steps on the same data; the rate is over the last `steps`."""
    results = {}
    with tempfile.TemporaryDirectory() as scratch, benchmarking():
        for name, cache in (("recipe", False), ("celadon", True)):
            times: list[float] = []
            began = time.monotonic()
            train_lora(replace(config, out=str(Path(scratch) / name), cache=cache, steps=warmup + steps,
                               checkpoint_every=10**9), progress=False, step_times=times)
            results[name] = {"steps_per_s": steps / sum(times[warmup:]), "wall_s": time.monotonic() - began}
    results["ratio"] = results["celadon"]["steps_per_s"] / results["recipe"]["steps_per_s"]
    return results


def bench_generate(config: GenerateConfig, items: int = 16) -> dict:
    plan = read_plan(config.plan).head(items)
    with tempfile.TemporaryDirectory() as scratch, benchmarking():
        plan_path = Path(scratch) / "plan.csv"
        plan.to_csv(plan_path, index=False)
        table = generate(replace(config, plan=str(plan_path), out=str(Path(scratch) / "celadon")), progress=False)
        ours = len(plan) / pd.read_csv(table)["seconds"].sum()  # pipeline calls only: loading is not timed
        pipe = prepare_generator_pipeline(config, fuse=False)
        kwargs = _call_kwargs(config)
        began = time.monotonic()
        for row in plan.itertuples(index=False):
            pipe(prompt=row.prompt, negative_prompt=row.negative_prompt,
                 generator=torch.Generator(pipe.device).manual_seed(int(row.seed)), **kwargs)
        plain = len(plan) / (time.monotonic() - began)
    return {"celadon": {"images_per_s": ours}, "plain": {"images_per_s": plain}, "ratio": ours / plain}
