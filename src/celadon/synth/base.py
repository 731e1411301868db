"""`celadon synth build-base`: train the shipped tiny SD model from scratch on procedural images.

Stages, each resumable from its last checkpoint (run in chunks with `max_minutes`):
1. render a balanced set of embedded images with *generic* captions ("a photo of a pale green ceramic vase");
2. VAE, with the loss weighted onto the vessel and a pooled-colour term (the plain backdrop otherwise dominates
   and colour is lost); it stops on a colour check of held-out reconstructions, not on a step count; then the
   decoder alone on the frozen encoder's latents, which brings back saturated glaze colours (`vae_from` skips
   both and reuses a built model's VAE, frozen: a wider UNet needs no wider VAE);
3. cache latents (posterior mean) and train the UNet jointly with the text encoder (min-SNR weighting, EMA);
4. export a StableDiffusionPipeline (fp16 safetensors) with its training logs and sample grids.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from celadon.checkpoint import load_checkpoint, save_checkpoint
from celadon.cpu import set_threads
from celadon.data.embedded import _all_combinations
from celadon.data.embedded.render import Labels, render
from celadon.device import resolve_device
from celadon.errors import CeladonError
from celadon.runinfo import append_csv_row, atomic_write_text, write_run_info
from celadon.synth import tiny
from celadon.synth.base_folder import check_vae_source, claim_work_folder, load_frozen_vae
from celadon.synth.pipeline import DEFAULT_NEGATIVE, TINY_PATH, min_snr_weight, save_grid, silence_hf_progress_bars

SAMPLE_PROMPTS = [tiny.generic_caption(g, t) for g, t in (
    ("celadon", "vase"), ("black", "teabowl"), ("blue_white", "jar"), ("brown", "ewer"),
    ("white", "plate"), ("green", "bowl"), ("sky_blue", "censer"), ("rose_purple", "basin"))]


HELD_OUT = 64  # rendered images kept out of training for the VAE's colour check


@dataclass
class BaseConfig:
    work: str = ".celadon/base-build"  # resumable state
    out: str = str(TINY_PATH)
    images: int = 6000
    seed: int = 0
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_min_steps: int = 300
    vae_max_steps: int = 900
    colour_tolerance: float = 0.025  # stop when held-out vessel colour error (0..1 RGB) is below this
    decoder_steps: int = 1500  # then the decoder alone, on the frozen encoder (0: skip)
    decoder_lr: float = 5e-4
    unet_steps: int = 1600
    unet_batch: int = 64
    unet_lr: float = 6e-4
    text_lr: float = 3e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    sample_every: int = 250
    checkpoint_minutes: float = 3.0
    max_minutes: float = 0.0  # stop (resumably) after this long; 0 = run to the end
    threads: int = 2
    architecture: str = "tiny"  # tiny.ARCHITECTURES: "tiny" (shipped) or "small" (about 6x the parameters)
    vae_from: str = ""  # "tiny" or a pipeline folder: reuse its VAE, frozen, and skip both VAE phases
    device: str = "cpu"  # "auto" takes a GPU when torch sees one; the random draws stay on the CPU either way


class _OutOfTime(Exception):
    pass


def _render(args: tuple[int, tuple[str, str, str, str], int]) -> np.ndarray:
    _, (dynasty, kiln, glaze, kind), seed = args
    img = render(Labels(dynasty, kiln, glaze, kind), tiny.RESOLUTION, np.random.default_rng(seed))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _dataset(work: Path, config: BaseConfig, progress: bool) -> tuple[np.ndarray, list[str]]:
    path = work / "data.npz"
    if not path.exists():
        combos, _ = _all_combinations()
        rng = np.random.default_rng(config.seed)
        picks = rng.integers(0, len(combos), config.images)
        jobs = [(i, combos[c], int(rng.integers(2**62))) for i, c in enumerate(picks)]
        with ProcessPoolExecutor(max_workers=config.threads) as pool:
            images = np.stack(list(tqdm(pool.map(_render, jobs, chunksize=64), total=len(jobs),
                                        desc="rendering base set", disable=not progress)))
        captions = [tiny.generic_caption(combos[c][2], combos[c][3]) for c in picks]
        tmp = work / "data.tmp.npz"
        np.savez(tmp, images=images, captions=np.array(captions))
        tmp.replace(path)
    data = np.load(path)
    return data["images"], [str(c) for c in data["captions"]]


def _vessel_weight(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel weight: 5 on the vessel (pixels unlike the corner backdrop colour), 1 on the backdrop."""
    corners = torch.stack([x[:, :, :4, :4], x[:, :, :4, -4:], x[:, :, -4:, :4], x[:, :, -4:, -4:]], 1)
    backdrop = corners.flatten(3).median(dim=3).values.median(dim=1).values[:, :, None, None]
    return 1 + 4 * ((x - backdrop).abs().amax(1, keepdim=True) > 0.12).float()


def colour_error(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Mean absolute difference of the vessel's mean colour, in 0..1 RGB (images in -1..1)."""
    mask = (_vessel_weight(original) > 1).float()
    area = mask.sum((2, 3)).clamp(min=1)
    mean_o = (original * mask).sum((2, 3)) / area
    mean_r = (reconstruction * mask).sum((2, 3)) / area
    return float(((mean_o - mean_r).abs() / 2).mean())


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class _Clock:
    def __init__(self, config: BaseConfig):
        self.start = self.saved = time.monotonic()
        self.config = config

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.saved > self.config.checkpoint_minutes * 60

    def out_of_time(self) -> bool:
        return bool(self.config.max_minutes) and time.monotonic() - self.start > self.config.max_minutes * 60


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, pools: tuple[int, ...]) -> torch.Tensor:
    """L1 weighted onto the vessel plus pooled-colour terms (mean colour of k x k blocks), so glaze colour survives."""
    pooled = sum(F.mse_loss(F.avg_pool2d(recon, k), F.avg_pool2d(x, k)) for k in pools)
    return (_vessel_weight(x) * (recon - x).abs()).mean() + 2 * pooled


def _train_autoencoder(work: Path, images: np.ndarray, vae, config: BaseConfig, clock: _Clock, phase: str,
                       progress: bool) -> None:
    """phase "vae": encoder + decoder, stopping on the held-out colour check (or `vae_max_steps`);
    phase "decoder": the decoder alone on the frozen encoder's latents for `decoder_steps`, which sharpens
    colour and detail without moving the latent space (cached latents and a trained UNet stay valid)."""
    folder = work / phase
    if (folder / "done.json").exists():
        vae.load_state_dict(load_checkpoint(folder)[1])
        vae.requires_grad_(False)
        return
    decoder_only = phase == "decoder"
    max_steps = config.decoder_steps if decoder_only else config.vae_max_steps
    vae.requires_grad_(False)
    trained = [vae.decoder, vae.post_quant_conv] if decoder_only else [vae]
    for module in trained:
        module.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad],
                                  lr=config.decoder_lr if decoder_only else config.vae_lr, weight_decay=0.0)
    held_out, train = images[:HELD_OUT], images[HELD_OUT:]
    step, rng = 0, np.random.default_rng(config.seed + (3 if decoder_only else 1))
    if (found := load_checkpoint(folder)) is not None:
        step, weights, state = found
        vae.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
    device = next(vae.parameters()).device
    held = _to_tensor(held_out).to(device)
    bar = tqdm(total=max_steps, initial=step, desc="VAE decoder" if decoder_only else "VAE",
               disable=not progress)
    while step < max_steps:
        x = _to_tensor(train[rng.integers(0, len(train), config.vae_batch)]).to(device)
        if rng.random() < 0.5:
            x = x.flip(3)
        if decoder_only:
            with torch.no_grad():
                z, kl = vae.encode(x).latent_dist.mode(), 0.0
        else:
            posterior = vae.encode(x).latent_dist
            z = posterior.sample(generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
            kl = 1e-6 * posterior.kl().mean()
        loss = _reconstruction_loss(vae.decode(z).sample, x, (8, 4) if decoder_only else (8,)) + kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update()
        done = False
        if step % 100 == 0:
            with torch.no_grad():
                recon = vae.decode(vae.encode(held).latent_dist.mode()).sample.clamp(-1, 1)
            error = colour_error(held, recon)
            psnr = float(10 * torch.log10(4 / F.mse_loss(recon, held)))
            append_csv_row(work / f"{phase}_log.csv", {"step": step, "loss": round(float(loss.detach()), 5),
                                                       "colour_error": round(error, 4), "psnr": round(psnr, 2)})
            bar.set_postfix(colour=f"{error:.3f}", psnr=f"{psnr:.1f}")
            done = not decoder_only and step >= config.vae_min_steps and error < config.colour_tolerance
        if done or step >= max_steps or clock.checkpoint_due() or clock.out_of_time():
            save_checkpoint(folder, step, vae, {"optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state})
            clock.saved = time.monotonic()
            if done:
                break
            if clock.out_of_time() and step < max_steps:
                raise _OutOfTime
    vae.requires_grad_(False)
    with torch.no_grad():
        recon = vae.decode(vae.encode(held[:16]).latent_dist.mode()).sample.clamp(-1, 1)
    pics = [_pil(t) for pair in zip(held[:16], recon, strict=True) for t in pair]
    save_grid(pics, work / "vae_reconstructions.png", columns=8)
    atomic_write_text(folder / "done.json", json.dumps({"step": step}))


def _pil(t: torch.Tensor):
    from PIL import Image

    return Image.fromarray(((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())


def _latents(work: Path, images: np.ndarray, vae) -> tuple[torch.Tensor, float]:
    path = work / "latents.pt"
    if not path.exists():
        device = next(vae.parameters()).device
        with torch.no_grad():
            chunks = [vae.encode(_to_tensor(images[i:i + 256]).to(device)).latent_dist.mode().cpu()
                      for i in range(0, len(images), 256)]
        latents = torch.cat(chunks)
        torch.save({"latents": latents, "scaling_factor": float(1 / latents.std())}, work / "latents.tmp.pt")
        (work / "latents.tmp.pt").replace(path)
    data = torch.load(path, weights_only=True)
    return data["latents"], data["scaling_factor"]


def _tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _pipeline(vae, text_encoder, tokenizer, unet, scheduler, scaling_factor: float):
    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling_factor)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _sample(unet, text_encoder, vae, tokenizer, scheduler, scaling_factor: float, path: Path) -> None:
    pipe = _pipeline(vae, text_encoder, tokenizer, unet, scheduler, scaling_factor)
    pipe.set_progress_bar_config(disable=True)
    # No negative prompt: the base model never saw those words, so as CFG's "unconditional" side they only
    # add noise (generation with the tiny model uses an empty negative prompt for the same reason).
    images = pipe(SAMPLE_PROMPTS, num_inference_steps=20, guidance_scale=5.0, height=tiny.RESOLUTION,
                  width=tiny.RESOLUTION, generator=torch.Generator().manual_seed(0)).images
    save_grid(images, path, columns=4, labels=[p.replace("a photo of a ", "") for p in SAMPLE_PROMPTS])


def _train_unet(work: Path, captions: list[str], latents: torch.Tensor, scaling_factor: float, parts: dict,
                tokenizer, config: BaseConfig, clock: _Clock, progress: bool) -> torch.nn.ModuleDict:
    from diffusers import DDPMScheduler

    folder = work / "unet"
    model = torch.nn.ModuleDict({"unet": parts["unet"], "text_encoder": parts["text_encoder"]})
    ema = copy.deepcopy(model).requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)  # the same betas the sampler uses
    optimizer = torch.optim.AdamW([{"params": model["unet"].parameters(), "lr": config.unet_lr},
                                   {"params": model["text_encoder"].parameters(), "lr": config.text_lr}],
                                  weight_decay=1e-2)
    step, generator = 0, torch.Generator().manual_seed(config.seed + 2)
    if (found := load_checkpoint(folder)) is not None:
        step, weights, state = found
        model.load_state_dict(weights)
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    if step >= config.unet_steps:
        return ema
    device = next(model.parameters()).device
    ids = _tokenize(tokenizer, captions)
    empty = _tokenize(tokenizer, [""])[0]
    alphas = noise_scheduler.alphas_cumprod
    bar = tqdm(total=config.unet_steps, initial=step, desc="UNet + text encoder", disable=not progress)
    while step < config.unet_steps:
        lr_scale = min(1.0, (step + 1) / 200)  # warm-up
        for group, base_lr in zip(optimizer.param_groups, (config.unet_lr, config.text_lr), strict=True):
            group["lr"] = base_lr * lr_scale
        index = torch.randint(0, len(latents), (config.unet_batch,), generator=generator)
        z = latents[index] * scaling_factor
        flip = torch.rand(len(z), generator=generator) < 0.5
        z = torch.where(flip[:, None, None, None], z.flip(3), z)
        batch_ids = ids[index].clone()
        batch_ids[torch.rand(len(z), generator=generator) < config.caption_dropout] = empty
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, 1000, (len(z),), generator=generator)
        weight = min_snr_weight(alphas, t, 5.0).to(device)
        z, noise, t, batch_ids = z.to(device), noise.to(device), t.to(device), batch_ids.to(device)
        prediction = model["unet"](noise_scheduler.add_noise(z, noise, t), t,
                                   model["text_encoder"](batch_ids)[0]).sample
        loss = (weight * F.mse_loss(prediction, noise, reduction="none").mean((1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        step += 1
        bar.update()
        if step % 25 == 0:
            value = float(loss.detach())
            append_csv_row(work / "unet_log.csv", {"step": step, "loss": round(value, 5)})
            bar.set_postfix(loss=f"{value:.4f}")
        if step % config.sample_every == 0 or step == config.unet_steps:
            _sample(ema["unet"], ema["text_encoder"], parts["vae"], tokenizer, parts["scheduler"], scaling_factor,
                    work / "samples" / f"step_{step:05d}.png")
        if step == config.unet_steps or clock.checkpoint_due() or clock.out_of_time():
            save_checkpoint(folder, step, model, {"ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                                                  "generator": generator.get_state()})
            clock.saved = time.monotonic()
            if clock.out_of_time() and step < config.unet_steps:
                raise _OutOfTime
    return ema


def build_base(config: BaseConfig, progress: bool = True) -> Path | None:
    """Run (or resume) every stage; returns the exported pipeline folder, or None when out of time."""
    from transformers import CLIPTokenizer

    from celadon.synth.captions import caption
    from celadon.taxonomy import load_taxonomy

    tiny.architecture(config.architecture)  # an unknown name fails before any work
    if config.images <= HELD_OUT:
        raise CeladonError(f"images: {config.images} is too few; the VAE's colour check holds out {HELD_OUT}, "
                           f"so give more than {HELD_OUT} (the shipped recipe renders 6000)")
    vae_source = check_vae_source(config.vae_from)
    device = resolve_device(config.device)
    set_threads(config.threads)
    work = Path(config.work)
    work.mkdir(parents=True, exist_ok=True)
    claim_work_folder(work, config.architecture, vae_source)
    write_run_info(work, "synth build-base", config, config.seed)
    images, captions = _dataset(work, config, progress)
    taxonomy = load_taxonomy()
    corpus = captions + [DEFAULT_NEGATIVE] + [
        caption({task: code}, taxonomy) + " " + taxonomy.task(task).label(code).prompt
        for task in taxonomy.task_names for code in taxonomy.task(task).codes] + list(taxonomy.caption_parts)
    tokenizer = CLIPTokenizer.from_pretrained(tiny.write_trimmed_tokenizer(corpus, work / "tokenizer"))
    parts = tiny.new_components(len(tokenizer), seed=config.seed, name=config.architecture)
    if vae_source:
        parts["vae"] = load_frozen_vae(vae_source)
    for name in ("vae", "text_encoder", "unet"):
        parts[name].to(device)
    clock = _Clock(config)
    try:
        if not vae_source:
            _train_autoencoder(work, images, parts["vae"], config, clock, "vae", progress)
            _train_autoencoder(work, images, parts["vae"], config, clock, "decoder", progress)
        latents, scaling_factor = _latents(work, images, parts["vae"])
        ema = _train_unet(work, captions, latents, scaling_factor, parts, tokenizer, config, clock, progress)
    except _OutOfTime:
        return None
    if not progress:
        silence_hf_progress_bars()  # e.g. the text encoder's "Writing model shards" bar
    return _export(work, parts, ema, tokenizer, scaling_factor, config)


def _export(work: Path, parts: dict, ema, tokenizer, scaling_factor: float, config: BaseConfig) -> Path:
    out = Path(config.out)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    # Samples of the exported weights (the final decoder included), not the last training-time grid.
    _sample(ema["unet"], ema["text_encoder"], parts["vae"], tokenizer, parts["scheduler"], scaling_factor,
            staging / "training" / "samples.png")
    # A fresh tokenizer: one called with padding/truncation keeps that state and saves it in its tokenizer.json.
    fresh = type(tokenizer).from_pretrained(work / "tokenizer")
    pipe = _pipeline(parts["vae"], ema["text_encoder"], fresh, ema["unet"], parts["scheduler"], scaling_factor)
    pipe.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    training = staging / "training"
    for name in ("vae_log.csv", "decoder_log.csv", "unet_log.csv", "vae_reconstructions.png", "run.yaml"):
        if (work / name).exists():
            shutil.copy(work / name, training / name)
    atomic_write_text(training / "build.json", json.dumps(asdict(config), indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    return out
