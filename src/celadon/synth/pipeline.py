"""Loading a Stable Diffusion pipeline by profile, the paper's sampler, and sample grids.

Profiles: `tiny` is the SD-architecture model shipped in this package (64 px); `sd15` (or any path) is a
local diffusers folder or a single `.safetensors`/`.ckpt` checkpoint. Nothing is ever downloaded.
`sd15-random` is SD 1.5's architecture with seeded random weights: it measures speed at real size on a machine
without the weights, so only `celadon bench` may load it (its images are noise).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from pathlib import Path

from celadon.errors import CeladonError

TINY_PATH = Path(__file__).parent / "assets" / "tiny-sd"
DEFAULT_NEGATIVE = "low quality, blurry, modern, damaged, cracked"
RANDOM_SD15 = "sd15-random"
_BENCHMARKING = contextvars.ContextVar("celadon_benchmarking", default=False)


@contextlib.contextmanager
def benchmarking():
    """Inside this block `sd15-random` loads; everywhere else it is refused."""
    token = _BENCHMARKING.set(True)
    try:
        yield
    finally:
        _BENCHMARKING.reset(token)


def _config_folder() -> Path:
    from celadon.runinfo import default_cache_dir
    from celadon.synth.sd15 import write_sd15_config

    return write_sd15_config(default_cache_dir(None) / "sd15-config")


@dataclass(frozen=True)
class Profile:
    path: Path
    resolution: int
    half: bool  # fp16 on a GPU


def resolve_profile(model: str) -> Profile:
    """`tiny`, `sd15:/path` or a path -> where the weights are and the native resolution."""
    if model == RANDOM_SD15:
        if not _BENCHMARKING.get():
            raise CeladonError(f"{RANDOM_SD15} has random weights and makes noise: it is for `celadon bench lora` "
                               "and `celadon bench generate` only; give a local SD 1.5 folder or .safetensors file")
        return Profile(_config_folder(), 512, half=True)
    if model == "tiny":
        if not (TINY_PATH / "model_index.json").exists():
            raise CeladonError(f"the shipped tiny model is missing from {TINY_PATH}; rebuild it with "
                               "`celadon synth build-base` or reinstall celadon")
        return Profile(TINY_PATH, _native_resolution(TINY_PATH), half=False)
    path = Path(model.split(":", 1)[1] if model.startswith("sd15:") else model).expanduser()
    if not path.exists():
        raise CeladonError(f"model {str(path)!r} does not exist; give a local Stable Diffusion 1.5 folder "
                           "(with model_index.json) or a single .safetensors checkpoint (nothing is downloaded)")
    if path.is_dir() and not (path / "model_index.json").exists():
        raise CeladonError(f"{path} is not a diffusers pipeline folder (no model_index.json); give the folder "
                           "that holds model_index.json or a single-file checkpoint")
    if path.is_file() and path.suffix not in (".safetensors", ".ckpt"):
        raise CeladonError(f"{path}: a single-file checkpoint must be .safetensors or .ckpt")
    return Profile(path, _native_resolution(path), half=True)


def model_fingerprint(model: str) -> str:
    """What identifies the weights behind `model`, for content-addressed stages: the hash of every weight and
    config file for a small model (the shipped tiny one), name + size + mtime for multi-GB checkpoints."""
    import hashlib

    path = resolve_profile(model).path
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*"))
                   if p.is_file() and p.suffix in (".safetensors", ".ckpt", ".bin", ".json", ".txt"))
    digest = hashlib.sha256()
    small = sum(p.stat().st_size for p in files) < 100 * 2**20
    for p in files:
        digest.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        stat = p.stat()
        digest.update(p.read_bytes() if small else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _native_resolution(path: Path) -> int:
    """UNet sample size x VAE downsampling for a diffusers folder; 512 (SD 1.5) for a single file."""
    import json

    if path.is_file():
        return 512
    unet = json.loads((path / "unet" / "config.json").read_text())
    vae = json.loads((path / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def min_snr_weight(alphas_cumprod, timesteps, gamma: float):
    """Min-SNR-gamma loss weights for epsilon prediction: min(SNR, gamma) / SNR per sample."""
    import torch

    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    return torch.clamp(snr, max=gamma) / snr


def default_clip_skip(model: str) -> int:
    """The paper's "CLIP skip 2" (diffusers `clip_skip=1`) is standard for SD 1.5's 12-layer text encoder;
    a shallow text encoder (the tiny model's has 4 layers, trained on its last) uses none."""
    profile = resolve_profile(model)
    config = profile.path / "text_encoder" / "config.json"
    if profile.path.is_dir() and config.exists():
        import json

        return 1 if json.loads(config.read_text()).get("num_hidden_layers", 12) >= 12 else 0
    return 1


def karras_dpm_scheduler(config: dict):
    """DPM++ 2M Karras (the paper's sampler) from any SD scheduler config."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                   use_karras_sigmas=True)


def silence_hf_progress_bars() -> None:
    """diffusers' and transformers' own bars (loading components, writing weight shards)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(model: str, device: str = "cpu"):
    """A StableDiffusionPipeline with the DPM++ 2M Karras scheduler, offline, safety checker off."""
    import torch
    from diffusers import StableDiffusionPipeline

    profile = resolve_profile(model)
    on_gpu = device.startswith("cuda")
    dtype = torch.float16 if (profile.half and on_gpu) else torch.float32
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # set by --quiet; read here, not only at import
        silence_hf_progress_bars()
    try:
        if model == RANDOM_SD15:
            pipe = random_sd15_pipeline(dtype)
        elif profile.path.is_dir():
            pipe = StableDiffusionPipeline.from_pretrained(profile.path, dtype=dtype, safety_checker=None,
                                                           requires_safety_checker=False, local_files_only=True)
        else:
            pipe = StableDiffusionPipeline.from_single_file(profile.path, config=str(_config_folder()), dtype=dtype,
                                                            safety_checker=None, requires_safety_checker=False,
                                                            local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CeladonError(f"{profile.path}: not a loadable Stable Diffusion checkpoint ({first})") from None
    pipe.scheduler = karras_dpm_scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if on_gpu:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
    return pipe.to(device)


def random_sd15_pipeline(dtype=None, device: str = "cpu"):
    """SD 1.5's UNet (860 M parameters), VAE and CLIP ViT-L text encoder from the shipped configs, weights drawn
    from seed 0 (`device="meta"` builds the shapes without memory)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from celadon.synth.sd15 import SCHEDULER, TEXT, UNET, VAE

    def plain(config: dict) -> dict:
        return {k: v for k, v in config.items() if not k.startswith("_")}

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(plain(UNET))
        vae = AutoencoderKL.from_config(plain(VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT.items() if k != "architectures"}))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(
        _config_folder() / "tokenizer"), unet=unet, scheduler=PNDMScheduler.from_config(plain(SCHEDULER)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to(dtype=dtype) if dtype is not None and device != "meta" else pipe


def save_grid(images, path: str | Path, columns: int = 4, labels: list[str] | None = None) -> Path:
    """Tile PIL images into one PNG (optional short label under each)."""
    from PIL import Image, ImageDraw

    from celadon.runinfo import atomic_write_bytes

    width, height = images[0].size
    caption = 12 if labels else 0
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * (height + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, img in enumerate(images):
        x, y = (i % columns) * width, (i // columns) * (height + caption)
        sheet.paste(img.convert("RGB").resize((width, height)), (x, y))
        if labels:
            draw.text((x + 2, y + height), labels[i][: width // 6], fill="black")
    import io

    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
