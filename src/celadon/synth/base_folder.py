"""What a base build's work folder holds and may reuse: one architecture, and either a VAE trained in it or
a built model's VAE, frozen. Checked before any work, since checkpoints and cached latents fit nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_text
from celadon.synth.pipeline import TINY_PATH


def check_vae_source(vae_from: str) -> str:
    """The folder whose VAE a build reuses ("" to train one), checked before any work: the UNet is built for
    4 latent channels at a quarter of the image's side."""
    if not vae_from:
        return ""
    from diffusers import AutoencoderKL

    path = TINY_PATH if vae_from == "tiny" else Path(vae_from).expanduser()
    if not (path / "vae" / "config.json").is_file():
        raise CeladonError(f"vae_from: {vae_from} has no vae/config.json; give 'tiny' or a diffusers pipeline folder")
    vae = AutoencoderKL.load_config(path / "vae")
    down = 2 ** (len(vae["block_out_channels"]) - 1)
    if vae["latent_channels"] != 4 or down != 4:
        raise CeladonError(f"vae_from: {path}'s VAE has {vae['latent_channels']} latent channels and {down}x "
                           "downsampling; a base build needs 4 and 4x (the shipped tiny VAE's)")
    return str(path.resolve())


def load_frozen_vae(source: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32).requires_grad_(False)


def claim_work_folder(work: Path, architecture: str, vae_source: str) -> None:
    """A work folder resumes one architecture, and one VAE, only: its checkpoints and cached latents would not
    fit another."""
    marker = work / "architecture.json"
    if marker.exists():
        held = json.loads(marker.read_text())
    else:
        older = (work / "vae").exists()  # a folder from before there was a choice holds tiny checkpoints
        held = {"architecture": "tiny"} if older else \
            {"architecture": architecture} | ({"vae_from": vae_source} if vae_source else {})
        atomic_write_text(marker, json.dumps(held))
    built = held["architecture"]
    if built != architecture:
        raise CeladonError(f"{work} holds a {built!r} build; resume it with --architecture {built}, or give "
                           f"another --work for a {architecture!r} one")
    if held.get("vae_from", "") != vae_source:
        holds = f"the VAE of {held['vae_from']}" if held.get("vae_from") else "a VAE trained in it"
        raise CeladonError(f"{work} holds a build with {holds}; resume it with the same --vae-from, or give "
                           "another --work")
