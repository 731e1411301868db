"""`celadon synth generate`: run a plan through Stable Diffusion (+ LoRA) with the paper's settings.

DPM++ 2M Karras, 20 steps, CFG 7, LoRA scale 0.4 (fused into the weights, so generation runs at plain
pipeline speed), negative prompt from the plan. Every item has its own seeded generator, so an image does
not depend on which batch it fell into. Each image is written atomically under its item id, then its
metadata sidecar; an item is done when its sidecar exists. Killed and restarted, a run finishes the plan
with nothing missing and nothing twice; `shard="i/n"` splits the plan across processes or GPUs.

Generators are registered by name (`GENERATORS`): `txt2img` is the paper's method; `img2img` starts every
item from a real training photo (chosen by sources.py: the same vessel) and re-renders it at
`strength` through the same model + LoRA, running `strength` x `steps` denoising steps. `oracle` (perfect
images from the procedural renderer) and `replay` (img2img's source photos, shown again) are the controls
every generator is read against (controls.py); `copy` (the source photo unchanged) and `roundtrip` (through the
VAE alone), both with the item's labels, are what doing nothing scores in Table 6. Each item records its
generator, settings and source photo.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from celadon.cpu import set_threads
from celadon.data.manifest import PATH_COLUMN
from celadon.device import resolve_device
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_bytes, atomic_write_text, write_run_info
from celadon.synth.pipeline import default_clip_skip, load_pipeline, resolve_profile

PLAN_COLUMNS = ("item_id", "prompt", "negative_prompt", "seed")


@dataclass
class GenerateConfig:
    plan: str = ""  # plan.csv from `celadon synth plan`
    out: str = ""  # where images/, items/ and generated.csv go
    model: str = "tiny"  # tiny (shipped), or a local SD 1.5 folder / .safetensors file
    lora: str | None = None  # a `train-lora` output folder or a LoRA .safetensors (diffusers or kohya)
    lora_scale: float = 0.4  # fused into the weights
    steps: int = 20  # denoising steps (img2img runs strength x steps)
    guidance: float = 7.0  # classifier-free guidance scale
    clip_skip: int | None = None  # diffusers clip_skip; None: the LoRA's own, else 1 for SD 1.5 and 0 for tiny
    resolution: int = 0  # 0: the profile's native resolution
    batch_size: int = 8  # images per pipeline call (each item keeps its own seed)
    shard: str = "0/1"  # i/n: this process generates every n-th item from i
    device: str = "auto"  # auto (the GPU when there is one), cpu, cuda, cuda:N
    # several devices: one shard per device, run concurrently, merged when all are done (e.g. cuda:0,cuda:1)
    devices: tuple[str, ...] = ()
    threads: int = 0  # torch threads (0: every usable core, a count fixed by the machine; celadon.cpu)
    generator: str = "txt2img"  # a name in GENERATORS
    strength: float = 0.5  # img2img: share of the denoising redone on the source (0: the photo, 1: txt2img)
    real: str | None = None  # img2img: splits.csv whose real training photos are the sources
    max_source_uses: int = 2  # img2img: no photo starts more items while another one fits (0: no limit)
    translate: bool = False  # img2img: start from another class of the rendered task first (Diff-Mix)
    taxonomy: str | None = None  # of `real`


@dataclass(frozen=True)
class Generator:
    """A way of turning plan items into images, with a loaded pipeline or without one (the controls)."""

    description: str
    adapt: Callable  # the txt2img pipeline -> the pipeline this generator calls
    call: Callable  # (pipeline or None, batch rows, sampler kwargs, config) -> PIL images
    needs_sources: bool = False
    settings: tuple[str, ...] = ()  # GenerateConfig fields only this generator reads
    uses_pipeline: bool = True  # False: no Stable Diffusion (and no LoRA) is loaded
    true_labels: bool = False  # its images carry their labels by construction: QC's judge neither fails nor masks
    copies_by_design: bool = False  # its images are training photos again: not memorisation, not duplicates
    denoises: bool = True  # runs diffusion steps (what `bench estimate` prices); the references do not


def _txt2img(pipe, batch: pd.DataFrame, kwargs: dict, config: GenerateConfig) -> list:
    return pipe(prompt=list(batch["prompt"]), negative_prompt=list(batch["negative_prompt"]),
                generator=_seeded(pipe, batch), **kwargs).images


def _img2img_pipeline(pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    # The same modules, no copy (from_pipe would re-cast them and warn about it).
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    return img2img


def _img2img(pipe, batch: pd.DataFrame, kwargs: dict, config: GenerateConfig) -> list:
    from celadon.synth.sources import source_images

    sources = source_images(batch, kwargs["height"])
    sampler = {k: v for k, v in kwargs.items() if k not in ("height", "width")}  # the source sets the size
    return pipe(prompt=list(batch["prompt"]), negative_prompt=list(batch["negative_prompt"]), image=sources,
                strength=config.strength, generator=_seeded(pipe, batch), **sampler).images


def _seeded(pipe, batch: pd.DataFrame) -> list:
    """One generator per item, seeded from the plan: an image does not depend on its batch."""
    return [torch.Generator(pipe.device).manual_seed(int(s)) for s in batch["seed"]]


def _oracle(pipe, batch: pd.DataFrame, kwargs: dict, config: GenerateConfig) -> list:
    from celadon.synth.controls import oracle_images

    return oracle_images(batch, kwargs["height"])


def _replay(pipe, batch: pd.DataFrame, kwargs: dict, config: GenerateConfig) -> list:
    from celadon.synth.sources import source_images

    return source_images(batch, kwargs["height"])  # the photo img2img starts from, not re-rendered


def _roundtrip(pipe, batch: pd.DataFrame, kwargs: dict, config: GenerateConfig) -> list:
    from celadon.synth.controls import vae_round_trip
    from celadon.synth.sources import source_images

    return vae_round_trip(pipe, source_images(batch, kwargs["height"]))


SOURCE_SETTINGS = ("real", "max_source_uses", "translate", "taxonomy")
GENERATORS: dict[str, Generator] = {
    "txt2img": Generator("text to image, the paper's method", lambda pipe: pipe, _txt2img),
    "img2img": Generator("a real training photo re-rendered with the target label (structure kept)",
                         _img2img_pipeline, _img2img, needs_sources=True, settings=("strength", *SOURCE_SETTINGS)),
    "oracle": Generator("control (ceiling): the embedded collection's renderer draws each item with exactly its "
                        "labels", lambda pipe: pipe, _oracle, uses_pipeline=False, true_labels=True, denoises=False),
    "replay": Generator("control (null): each item is img2img's source photo again, with the photo's own labels",
                        lambda pipe: pipe, _replay, needs_sources=True, settings=SOURCE_SETTINGS, uses_pipeline=False,
                        true_labels=True, copies_by_design=True, denoises=False),
    "copy": Generator("reference (do nothing): img2img's source photo unchanged, with the item's labels", lambda pipe:
                      pipe, _replay, needs_sources=True, settings=SOURCE_SETTINGS, uses_pipeline=False, denoises=False),
    "roundtrip": Generator("reference (do nothing): img2img's source photo through the VAE alone, with the item's "
                           "labels", lambda pipe: pipe, _roundtrip, needs_sources=True, settings=SOURCE_SETTINGS,
                           denoises=False),
}


def get_generator(name: str) -> Generator:
    if name not in GENERATORS:
        raise CeladonError(f"generator {name!r} is unknown; use one of {', '.join(GENERATORS)}")
    return GENERATORS[name]


def check_strength(strength: float, steps: int, where: str = "--strength") -> None:
    """img2img runs int(strength x steps) denoising steps: at least one, or it has nothing to do."""
    if not 0 < strength <= 1:
        raise CeladonError(f"{where} {strength}: give a value in (0, 1]")
    if int(strength * steps) < 1:
        raise CeladonError(f"{where} {strength} with {steps} steps leaves no denoising step (img2img runs "
                           "int(strength x steps)); raise the strength or the steps")


def generator_settings(config: GenerateConfig) -> dict:
    """The config as it matters to the images: fields only another generator reads are left out, so adding a
    generator changes neither the key nor the stamp of a txt2img run."""
    own = set(get_generator(config.generator).settings)
    unused = {f for g in GENERATORS.values() for f in g.settings} - own
    values = {k: v for k, v in asdict(config).items() if k not in unused}
    if config.generator == "txt2img":
        values.pop("generator")
    if not config.devices:
        values.pop("devices")
    return values


def read_plan(path: str | Path) -> pd.DataFrame:
    try:
        plan = pd.read_csv(path, dtype={"item_id": str, "negative_prompt": str}, keep_default_na=False,
                           na_values=[""])
    except FileNotFoundError:
        raise CeladonError(f"plan {path} does not exist; write one with `celadon synth plan`") from None
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise CeladonError(f"{path}: not a generation plan (missing column(s) {', '.join(missing)})")
    plan["negative_prompt"] = plan["negative_prompt"].fillna("")  # an empty cell is an empty negative prompt
    if plan["item_id"].duplicated().any():
        raise CeladonError(f"{path}: item id {plan['item_id'][plan['item_id'].duplicated()].iat[0]} appears twice")
    return plan


def parse_shard(shard: str) -> tuple[int, int]:
    index, sep, count = shard.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise CeladonError(f"--shard {shard!r}: expected i/n with 0 <= i < n, e.g. 0/2")
    return int(index), int(count)


def _lora_file(path: str) -> str:
    candidate = Path(path)
    for option in (candidate, candidate / "lora", candidate / "lora" / "pytorch_lora_weights.safetensors"):
        if option.is_file():
            return str(option)
        if (option / "pytorch_lora_weights.safetensors").is_file():
            return str(option / "pytorch_lora_weights.safetensors")
    raise CeladonError(f"--lora {path}: no LoRA weights there; give a `celadon synth train-lora` output folder "
                       "or a .safetensors LoRA file")


def _generate_concurrently(plan: pd.DataFrame, config: GenerateConfig, progress: bool) -> Path:
    """One `generate` process per device, shard i of n on device i; each writes its items atomically (a killed
    shard resumes where it stopped), and the table is collected once all are done: nothing missing or twice."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from celadon.cpu import usable_cores

    if config.shard != "0/1":
        raise CeladonError(f"--shard {config.shard} and --devices {','.join(config.devices)}: give one of them (the "
                           "devices split the plan themselves)")
    devices = [resolve_device(d) for d in config.devices]  # every device checked before any process starts
    count = len(devices)
    threads = config.threads or max(1, usable_cores() // count)  # shards on one CPU share its cores
    shards = [replace(config, devices=(), device=d, shard=f"{i}/{count}", threads=threads)
              for i, d in enumerate(devices)]
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            for future in [pool.submit(generate, shard, False) for shard in shards]:
                future.result()  # a shard's CeladonError arrives here as itself
        except BrokenProcessPool:
            raise CeladonError(f"{config.out}: a generation shard died (killed, or out of memory); run the same "
                               "command again: finished images are kept and only the rest is generated") from None
    table = collect(plan, Path(config.out))
    write_run_info(config.out, "synth generate", asdict(config), device=",".join(devices))  # over the shards' own
    if progress:
        print(f"{count} shards on {', '.join(devices)}: {len(plan)} items")
    return table


def prepare_generator_pipeline(config: GenerateConfig, fuse: bool = True):
    pipe = load_pipeline(config.model, resolve_device(config.device))
    if config.lora:
        try:
            pipe.load_lora_weights(_lora_file(config.lora), adapter_name="celadon")
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CeladonError(f"--lora {config.lora}: does not fit {config.model} ({str(exc).splitlines()[0]})") \
                from None
        if fuse:
            pipe.fuse_lora(lora_scale=config.lora_scale)
            pipe.unload_lora_weights()
        else:
            pipe.set_adapters(["celadon"], [config.lora_scale])
    return pipe


def lora_clip_skip(lora: str | None) -> int | None:
    """The clip skip a celadon LoRA was trained with (its `lora_config.json`); None for other LoRA files."""
    if not lora:
        return None
    card = Path(_lora_file(lora)).parent / "lora_config.json"
    return json.loads(card.read_text(encoding="utf-8")).get("clip_skip") if card.is_file() else None


def _call_kwargs(config: GenerateConfig) -> dict:
    """Sampler settings; an unset clip skip is the LoRA's own (what it was trained with), else the model's."""
    clip_skip = config.clip_skip
    if clip_skip is None:
        trained = lora_clip_skip(config.lora)
        clip_skip = default_clip_skip(config.model) if trained is None else trained
    resolution = config.resolution or resolve_profile(config.model).resolution
    return {"num_inference_steps": config.steps, "guidance_scale": config.guidance, "clip_skip": clip_skip or None,
            "height": resolution, "width": resolution}


def generate(config: GenerateConfig, progress: bool = True) -> Path:
    """Generate every pending item of this shard (of every shard, one process per device, when `devices` names
    several); returns the metadata table (`generated.csv`)."""
    set_threads(config.threads)
    method = get_generator(config.generator)
    plan = read_plan(config.plan)
    if method.needs_sources:
        plan = _with_sources(plan, config)
    index, count = parse_shard(config.shard)
    out = Path(config.out)
    _check_same_settings(out, config)
    if len(config.devices) > 1:
        return _generate_concurrently(plan, config, progress)
    if config.devices:
        config = replace(config, device=config.devices[0], devices=())
    device = resolve_device(config.device)
    write_run_info(out, "synth generate", asdict(config), device=device)
    mine = plan.iloc[index::count]
    pending = mine[[not (out / "items" / f"{item}.json").exists() for item in mine["item_id"]]]
    if len(pending):
        pipe = method.adapt(prepare_generator_pipeline(config)) if method.uses_pipeline else None
        kwargs = _call_kwargs(config)
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc="generating", disable=not progress)
        for start in range(0, len(pending), config.batch_size):
            batch = pending.iloc[start:start + config.batch_size]
            began = time.monotonic()
            images = method.call(pipe, batch, kwargs, config)
            seconds = (time.monotonic() - began) / len(batch)
            for row, image in zip(batch.to_dict("records"), images, strict=True):
                _write_item(out, row, image, config, kwargs, seconds)
            bar.update(len(batch))
        bar.close()
    return collect(plan, out)


def _with_sources(plan: pd.DataFrame, config: GenerateConfig) -> pd.DataFrame:
    """The whole plan's sources (not one shard's): every shard then agrees on them."""
    from celadon.data.manifest import read_manifest
    from celadon.synth.sources import assign_sources
    from celadon.taxonomy import load_taxonomy

    if not config.real:
        raise CeladonError(f"generator {config.generator} starts from real training photos: give the splits "
                           "manifest they come from (--real splits.csv)")
    if "strength" in get_generator(config.generator).settings:
        check_strength(config.strength, config.steps)
    real = read_manifest(config.real, load_taxonomy(config.taxonomy))
    plan = assign_sources(plan, real, config.max_source_uses, config.translate)
    if config.generator == "replay":  # the photo itself: its own labels, not the item's
        from celadon.synth.controls import relabel_as_sources

        plan = relabel_as_sources(plan, real, [t for t in real.tasks if t in plan.columns])
    return plan


def _check_same_settings(out: Path, config: GenerateConfig) -> None:
    """Resuming is only sound with the settings the finished images were made with (shards may differ)."""
    settings = {k: v for k, v in generator_settings(config).items()
                if k not in ("out", "shard", "batch_size", "threads", "device", "devices")}
    settings["plan"] = str(Path(config.plan).resolve())
    stamp = out / "generation.json"
    if stamp.exists():
        before = json.loads(stamp.read_text())
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise CeladonError(f"{out} holds images generated with other settings ({', '.join(changed)}); "
                               "use another --out, or the same settings to finish that run")
    else:
        atomic_write_text(stamp, json.dumps(settings, indent=1))


def _write_item(out: Path, row: dict, image, config: GenerateConfig, kwargs: dict, seconds: float) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    file = f"images/{row['item_id']}.png"
    atomic_write_bytes(out / file, buffer.getvalue())
    method = get_generator(config.generator)
    sampler = {"model": config.model, "lora": config.lora, "lora_scale": config.lora_scale if config.lora else None,
               **({"strength": config.strength} if "strength" in method.settings else {}),
               "steps": kwargs["num_inference_steps"], "guidance": kwargs["guidance_scale"],
               "clip_skip": kwargs["clip_skip"]} if method.uses_pipeline else {}
    record = {**{k: (None if pd.isna(v) else v) for k, v in row.items()}, PATH_COLUMN: file,
              "generator": config.generator, **sampler, "seconds": round(seconds, 3)}
    atomic_write_text(out / "items" / f"{row['item_id']}.json", json.dumps(record, ensure_ascii=False, default=str))


def collect(plan: pd.DataFrame, out: Path) -> Path:
    """`generated.csv`: the finished items in plan order, a manifest (`path` + labels) QC and training read."""
    records = [json.loads(p.read_text(encoding="utf-8")) for item in plan["item_id"]
               if (p := out / "items" / f"{item}.json").exists()]
    table = pd.DataFrame(records)
    if len(table):
        table = table[[PATH_COLUMN, *[c for c in table.columns if c != PATH_COLUMN]]]
    path = out / "generated.csv"
    atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return path
