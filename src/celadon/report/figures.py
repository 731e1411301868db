"""Figures the report draws itself (everything else comes from the stages' own PNGs): curves, and the
source | each generator | real strip for the same plan items."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from celadon.data.images import load_image  # noqa: E402

CELL = 96


def validation_curve_png(curves: dict[str, Sequence[float]], title: str, x: Sequence[float], xlabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in curves.items():
        ax.plot(list(x)[:len(values)], values, marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _cell(path: Path) -> Image.Image:
    return load_image(path).convert("RGB").resize((CELL, CELL), Image.BILINEAR)


def comparison_strip(generations: dict[str, str | Path], splits: str | Path, tasks: Sequence[str],
                     rows: int = 8, references: int = 2) -> bytes:
    """One row per prompt (distinct labels of `tasks`, the taxonomy's combination role, in plan order): the
    img2img source photo (when a generation has one), each generation's image of the same plan item, then
    real training photos of the target combination."""
    tasks = list(tasks)
    tables = {name: pd.read_csv(path, keep_default_na=False).set_index("item_id", drop=False)
              for name, path in generations.items()}
    first = next(iter(tables.values()))
    with_source = next((name for name, t in tables.items() if "source" in t), None)
    real = pd.read_csv(splits, keep_default_na=False)
    real = real[real["split"] == "train"]
    shown = first.drop_duplicates(tasks).head(rows)
    titles = (["source photo"] if with_source else []) + list(tables) + ["real"] * references
    label_h = 14
    sheet = Image.new("RGB", (len(titles) * CELL, len(shown) * (CELL + label_h) + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(titles):
        draw.text((i * CELL + 4, 1), title[:16], fill="black")
    for r, row in enumerate(shown.to_dict("records")):
        top = label_h + r * (CELL + label_h)
        draw.text((4, top), " ".join(str(row[t]) for t in tasks), fill="black")
        item = row["item_id"]
        cells: list[Path | None] = []
        if with_source:
            table = tables[with_source]
            cells.append(Path(table.at[item, "source"]) if item in table.index else None)
        for name, table in tables.items():
            cells.append(Path(generations[name]).parent / table.at[item, "path"] if item in table.index else None)
        same = (real[tasks] == pd.Series({t: row[t] for t in tasks})).all(axis=1)
        cells += [Path(splits).parent / p for p in real[same].head(references)["path"]]
        for c, path in enumerate(cells):
            if path is not None:
                sheet.paste(_cell(path), (c * CELL, top + label_h))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
