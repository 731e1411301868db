"""Structured captions (paper Table 4) from the taxonomy's caption template, and the LoRA training folder
written so diffusers (imagefolder `metadata.jsonl`) and kohya-style tools (`.txt` sidecars) both read it."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from celadon.data.augment import load_row_image
from celadon.data.manifest import Manifest
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_bytes, atomic_write_text, write_run_info
from celadon.taxonomy import Taxonomy

_FIELD = re.compile(r"\{(\w+)(?:\.(prompt|zh|en|code))?\}")
_OPTIONAL = re.compile(r"\[([^\]]*)\]")


class _Unknown(Exception):
    """A template field whose label is unknown or whose descriptor is empty."""


def _fill(template: str, labels: Mapping[str, str | None], taxonomy: Taxonomy) -> str | None:
    def value(match: re.Match) -> str:
        code = labels.get(match[1])
        if not code:
            raise _Unknown
        text = getattr(taxonomy.task(match[1]).label(code), match[2] or "en")
        if not text:
            raise _Unknown
        return text

    def optional(match: re.Match) -> str:
        try:
            return _FIELD.sub(value, match[1])
        except _Unknown:
            return ""

    try:
        return _FIELD.sub(value, _OPTIONAL.sub(optional, template))
    except _Unknown:
        return None


def caption(labels: Mapping[str, str | None], taxonomy: Taxonomy) -> str:
    """The caption of one image: the taxonomy's template parts filled from its labels, joined by ", ".
    A part with an unknown label is left out, and so is a [bracketed] segment whose field is empty, so a
    missing kiln never yields "None kiln produced"."""
    if not taxonomy.caption_parts:
        raise CeladonError(f"taxonomy {taxonomy.name!r} has no caption_parts; add them to its YAML")
    parts = (_fill(template, labels, taxonomy) for template in taxonomy.caption_parts)
    return ", ".join(part for part in parts if part)


@dataclass
class CaptionConfig:
    selection: str = ""  # selection.csv from `celadon synth select`
    out: str = ""  # the LoRA training folder: images/, metadata.jsonl, .txt captions
    taxonomy: str | None = None


def write_lora_folder(selection: Manifest, out_dir: str | Path, progress: bool = True,
                      taxonomy: str | None = None) -> Path:
    """Materialise the selected images (virtual augmentations rendered) as PNGs with captions beside them.
    Re-running keeps finished images: each is written atomically under a name fixed by its row."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    records = []
    rows = selection.frame.to_dict("records")
    for index, row in enumerate(tqdm(rows, desc="writing LoRA set", disable=not progress)):
        name = f"{index:05d}_{Path(str(row['path'])).stem}"
        target = image_dir / f"{name}.png"
        text = caption(row, selection.taxonomy)
        if not target.exists():
            buffer = io.BytesIO()
            load_row_image(selection, index).save(buffer, format="PNG")
            atomic_write_bytes(target, buffer.getvalue())
        atomic_write_text(image_dir / f"{name}.txt", text + "\n")
        records.append({"file_name": f"images/{name}.png", "text": text,
                        **{t: row.get(t) for t in selection.tasks},
                        "tier": int(row["tier"]) if row.get("tier") is not None else None})
    metadata = out_dir / "metadata.jsonl"
    atomic_write_text(metadata, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_run_info(out_dir, "synth caption", CaptionConfig(selection.source, str(out_dir), taxonomy))
    return metadata
