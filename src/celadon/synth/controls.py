"""The two controls every generator is read against: `oracle` (the ceiling) and `replay` (the null).

- **oracle**: the embedded collection's procedural renderer draws a *new* object for each plan item with
  exactly its labels: perfect images of the plan's combinations. Its render seed comes from the item's seed in
  a namespace of its own (`oracle:<seed>`), never the collection's (`demo:<seed>:<row>`), so no oracle image
  is a collection image. Like the collection's photos it passes through JPEG at the collection's quality. It
  draws at the generation resolution (`resolution`, else the model's: 64 px for the tiny model), so it meets
  the classifier as the other generators' images do; `resolution: 128` draws at the collection's own size.
  Only the embedded porcelain taxonomy can be drawn.
- **replay**: each item is its img2img source photo again — the same training photo img2img would start from,
  chosen the same way (`sources.py`), resized to the generation resolution exactly as img2img resizes its
  input, and not re-rendered (no VAE round trip). It is labelled with the *source's* labels, which are true,
  not the item's. An arm with it separates "new images" from "the same photos shown again".

A third reference, `roundtrip`, is a do-nothing generator for img2img: each item's source photo through the
model's VAE (encode, decode) with no denoising, labelled with the item's *intended* labels as img2img's
images are. What img2img keeps of a label beyond this is what its denoising adds.

Oracle and replay carry true labels by construction, so QC neither fails nor masks them on the judge's reading, and
replay's copies of training photos (and of each other, where a photo is the source of two items) are copies
by design, not memorisation.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd

from celadon.errors import CeladonError

RENDERED_TASKS = ("dynasty", "kiln", "glaze", "type")  # what the procedural renderer draws


def oracle_seed(item_seed: int) -> int:
    """The render seed of a plan item's oracle image: a namespace no collection image is drawn from."""
    return int.from_bytes(hashlib.sha256(f"oracle:{int(item_seed)}".encode()).digest()[:8], "little")


def oracle_images(batch: pd.DataFrame, size: int) -> list:
    """Each item drawn by the renderer with exactly its labels, through JPEG as the collection's photos are."""
    from PIL import Image

    from celadon.data.embedded import EmbeddedConfig
    from celadon.data.embedded.render import Labels, render

    missing = [t for t in RENDERED_TASKS if t not in batch.columns]
    if missing:
        raise CeladonError(f"generator oracle draws the embedded porcelain collection; this plan has no "
                           f"{', '.join(missing)} column (a collection of your own has no oracle: use replay "
                           "as its control)")
    images = []
    for row in batch.to_dict("records"):
        labels = {t: (None if pd.isna(row[t]) else row[t]) for t in RENDERED_TASKS}
        if labels["glaze"] is None or labels["type"] is None:
            raise CeladonError(f"plan item {row['item_id']}: the oracle needs its glaze and type")
        try:
            image = render(Labels(**labels), size, np.random.default_rng(oracle_seed(row["seed"])))
        except (KeyError, ValueError) as exc:
            raise CeladonError(f"plan item {row['item_id']}: the renderer cannot draw {labels} ({exc}); the oracle "
                               "draws the embedded porcelain vocabulary only") from None
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=EmbeddedConfig.quality)
        images.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return images


def relabel_as_sources(plan: pd.DataFrame, real, tasks: list[str]) -> pd.DataFrame:
    """A replay plan: each item carries its source photo's labels (true) and shares every task with it."""
    from celadon.synth.sources import SHARED_COLUMN

    by_path = {str(p.resolve()): i for i, p in enumerate(real.image_paths())}
    rows = [by_path[str(source)] for source in plan["source"]]
    plan = plan.copy()
    for task in tasks:
        plan[task] = [real.frame[task].iat[i] for i in rows]
    plan[SHARED_COLUMN] = [",".join(t for t in tasks if plan[t].iat[k] is not None and not pd.isna(plan[t].iat[k]))
                           for k in range(len(plan))]
    return plan


def vae_round_trip(pipe, photos: list) -> list:
    """Each photo encoded and decoded by the pipeline's VAE, no denoising: what the model's latent space keeps."""
    import torch
    from PIL import Image

    images = []
    for photo in photos:
        pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 127.5 - 1
        pixels = pixels.to(pipe.device, dtype=pipe.vae.dtype)
        with torch.no_grad():
            decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample
        back = ((decoded[0].float().permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        images.append(Image.fromarray(back))
    return images
