"""The embedded `tiny` profile: an SD-architecture pipeline small enough to train and run on a CPU.

Same classes as Stable Diffusion 1.5 (AutoencoderKL, CLIPTextModel + CLIPTokenizer, UNet2DConditionModel),
so every diffusers/peft code path (schedulers, clip skip, LoRA, kohya export) is exercised for real.
The tokenizer is CLIP's own BPE (shipped by open_clip) trimmed to the tokens our captions use plus every
byte-level character, so any text still tokenizes and ids for known words follow CLIP's merge order.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import regex

from celadon.errors import CeladonError

RESOLUTION = 64
SPECIAL = ("<|startoftext|>", "<|endoftext|>")
# CLIP's pre-tokenisation pattern (lower-cased text, contractions, letters, digits, other symbols).
_WORDS = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                       r"[^\s\p{L}\p{N}]+", regex.IGNORECASE)

# Plain words a general image model would know for the embedded renderer's glazes and vessel types:
# the base model learns these, and only LoRA learns the taxonomy's vocabulary (the paper's premise).
GENERIC_COLOUR = {
    "celadon": "pale green", "white": "white", "black": "black", "qingbai": "pale blue white",
    "blue_white": "white and blue painted", "yellow_green": "olive", "grey_green": "grey green",
    "brown": "brown", "green": "green", "rose_purple": "purple and red", "grape_purple": "dark purple",
    "greenish_yellow": "yellow", "sky_blue": "light blue", "tianqing": "pale blue green",
    "transparent": "glossy white", "moon_white": "pale blue", "ivory_white": "cream",
}
GENERIC_SHAPE = {
    "bowl": "bowl", "plate": "plate", "vase": "vase", "jar": "jar", "ewer": "jug", "cup": "cup",
    "teabowl": "small bowl", "cup_stand": "saucer", "washer": "shallow bowl", "censer": "pot with legs",
    "brush_pot": "cylinder pot", "zun": "tall vase", "water_pot": "small pot", "pillow": "ceramic block",
    "basin": "basin", "basin_stand": "ring stand", "water_dropper": "small jug", "gui": "bowl with handles",
    "box": "round box", "dish": "dish",
}


def generic_caption(glaze: str, kind: str) -> str:
    return f"a photo of a {GENERIC_COLOUR[glaze]} ceramic {GENERIC_SHAPE[kind]}"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(visible), 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(visible, codes, strict=True)}


def _clip_merges() -> list[tuple[str, str]]:
    """CLIP's BPE merges, in rank order, from the vocabulary file that open_clip ships."""
    source = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]


def _bpe_path(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges CLIP's BPE applies to one word, in order."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:], strict=False)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return used


def write_trimmed_tokenizer(texts: Iterable[str], out_dir: str | Path) -> Path:
    """Write vocab.json + merges.txt (+ configs) of a CLIPTokenizer that gives the same pieces as CLIP's
    for every word in `texts` and falls back to characters elsewhere."""
    byte_chars = _bytes_to_unicode()
    merges = _clip_merges()
    ranks = {pair: i for i, pair in enumerate(merges)}
    words = {word for text in texts for word in _WORDS.findall(text.lower()) if word not in SPECIAL}
    needed: set[tuple[str, str]] = set()
    for word in words:
        needed.update(_bpe_path("".join(byte_chars[b] for b in word.encode("utf-8")), ranks))
    return _write_tokenizer([pair for pair in merges if pair in needed], byte_chars, out_dir)


def write_clip_tokenizer(out_dir: str | Path) -> Path:
    """CLIP ViT-L/14's full tokenizer (49,408 tokens, SD 1.5's), offline."""
    return _write_tokenizer(_clip_merges(), _bytes_to_unicode(), out_dir)


def _write_tokenizer(merges: list[tuple[str, str]], byte_chars: dict[int, str], out_dir: str | Path) -> Path:
    base = list(byte_chars.values())
    vocab_list = base + [c + "</w>" for c in base] + ["".join(pair) for pair in merges] + list(SPECIAL)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"model_max_length": 77, "pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
              "do_lower_case": True}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return out_dir


@dataclass(frozen=True)
class Architecture:
    """Widths of a base model built from scratch at 64 px (SD 1.5's classes, smaller)."""

    vae: tuple[int, ...]  # AutoencoderKL block_out_channels (4x down, 4 latent channels)
    vae_layers: int
    unet: tuple[int, ...]  # UNet2DConditionModel block_out_channels
    text_width: int  # CLIP text encoder hidden size (= cross-attention width)
    text_layers: int
    groups: int  # GroupNorm groups in the VAE and UNet


# `tiny` is the shipped model (4.2 M parameters, 8.5 MB fp16). `small` doubles the VAE's and UNet's widths (a
# fourth as wide again at the UNet's bottom) and the text encoder's, for when the images, not the training on
# them, are what limits a synthetic arm: 26.7 M parameters with the trimmed tokenizer, about 54 MB fp16.
ARCHITECTURES = {
    "tiny": Architecture(vae=(32, 64, 64), vae_layers=1, unet=(32, 64, 64), text_width=128, text_layers=4, groups=16),
    "small": Architecture(vae=(64, 128, 128), vae_layers=2, unet=(64, 128, 256), text_width=256, text_layers=4,
                          groups=32),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise CeladonError(f"unknown base architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def new_components(vocab_size: int, seed: int = 0, name: str = "tiny") -> dict:
    """Freshly initialised SD components of architecture `name` (VAE 4x down, 4 latent channels)."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = architecture(name)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=arch.vae,
                        down_block_types=("DownEncoderBlock2D",) * len(arch.vae),
                        up_block_types=("UpDecoderBlock2D",) * len(arch.vae),
                        layers_per_block=arch.vae_layers, norm_num_groups=arch.groups, sample_size=RESOLUTION)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=arch.text_width,
                                        intermediate_size=4 * arch.text_width, num_hidden_layers=arch.text_layers,
                                        num_attention_heads=arch.text_width // 32, max_position_embeddings=77,
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        pad_token_id=vocab_size - 1, projection_dim=arch.text_width))
    unet = UNet2DConditionModel(sample_size=RESOLUTION // 4, in_channels=4, out_channels=4,
                                block_out_channels=arch.unet, layers_per_block=2, norm_num_groups=arch.groups,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=arch.text_width, attention_head_dim=8)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, algorithm_type="dpmsolver++",
                                            solver_order=2, use_karras_sigmas=True, steps_offset=1)
    return {"vae": vae, "text_encoder": text, "unet": unet, "scheduler": scheduler}
