"""A contact sheet: one picture of many manifest images with their labels, to look at a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from celadon.data.augment import load_row_image
from celadon.data.manifest import Manifest
from celadon.runinfo import atomic_write_bytes


def contact_sheet(manifest: Manifest, out: str | Path, n: int = 48, columns: int = 8, cell: int = 128,
                  seed: int = 0, label_tasks: tuple[str, ...] | None = None) -> Path:
    """Sample `n` rows spread over label combinations and write a labelled grid PNG to `out`."""
    rng = np.random.default_rng(seed)
    keys = manifest.combination_keys()
    # One image per combination first (the tail is what matters), then fill at random.
    firsts = keys.drop_duplicates().index.to_numpy().copy()
    rng.shuffle(firsts)
    rest = np.setdiff1d(np.arange(len(manifest)), firsts)
    chosen = np.concatenate([firsts, rng.permutation(rest)])[:n]
    tasks = list(label_tasks or manifest.taxonomy.combination)  # default: the combination role (glaze type)
    rows = (len(chosen) + columns - 1) // columns
    caption = 14
    sheet = Image.new("RGB", (columns * cell, rows * (cell + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for slot, index in enumerate(chosen):
        x, y = (slot % columns) * cell, (slot // columns) * (cell + caption)
        sheet.paste(load_row_image(manifest, int(index)).resize((cell, cell), Image.LANCZOS), (x, y))
        text = " ".join(str(manifest.frame[t].iat[int(index)] or "?") for t in tasks)
        draw.text((x + 2, y + cell + 1), text[: cell // 6], fill=(0, 0, 0))
    import io

    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)
