"""celadon's embedded default: a procedural porcelain photo set with the paper's long tail.

Combinations (dynasty, kiln, glaze, type) follow kiln -> glaze/type/dynasty correlations loosely based on
the historical record; their sizes follow a Zipf-like law, so a few combinations hold hundreds of
images and many hold 1-10, as in the paper's collection. Deterministic for a seed; resumable.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from celadon.data.embedded.render import Labels, render
from celadon.data.manifest import PATH_COLUMN
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_bytes, atomic_write_text, write_run_info

# kiln -> (weight, P(song), glazes {code: weight}, types {code: weight})
KILN_TABLE: dict[str, tuple[float, float, dict[str, float], dict[str, float]]] = {
    "jingdezhen": (10, 0.4, {"qingbai": 5, "blue_white": 6, "white": 2, "ivory_white": 1, "moon_white": 0.5},
                   {"vase": 4, "jar": 4, "plate": 4, "bowl": 3, "cup": 2, "ewer": 2, "box": 2, "cup_stand": 1}),
    "longquan": (9, 0.5, {"celadon": 6, "grey_green": 2, "yellow_green": 1.5, "greenish_yellow": 1, "ivory_white": 0.3},
                 {"bowl": 5, "plate": 4, "vase": 3, "censer": 2, "jar": 2, "zun": 1, "washer": 1, "dish": 2}),
    "ru": (2, 1.0, {"tianqing": 5, "sky_blue": 1, "celadon": 1, "moon_white": 0.5},
           {"washer": 3, "dish": 3, "bowl": 2, "vase": 1, "cup_stand": 1}),
    "jun": (5, 0.45, {"sky_blue": 5, "moon_white": 2, "rose_purple": 2, "grape_purple": 1},
            {"bowl": 3, "basin": 2, "basin_stand": 1.5, "censer": 1.5, "vase": 1, "plate": 1}),
    "ding": (6, 0.95, {"white": 4, "ivory_white": 4, "black": 0.5, "brown": 0.5},
             {"bowl": 5, "plate": 4, "dish": 3, "pillow": 1, "ewer": 1, "box": 1}),
    "ge": (2, 0.7, {"grey_green": 3, "moon_white": 1.5, "ivory_white": 1},
           {"censer": 2, "dish": 2, "bowl": 2, "vase": 1, "washer": 1}),
    "guan": (2, 0.9, {"grey_green": 2, "celadon": 2, "moon_white": 1, "tianqing": 1},
             {"vase": 2, "washer": 2, "censer": 1, "plate": 1, "gui": 1}),
    "cizhou": (5, 0.6, {"white": 4, "black": 2, "brown": 1, "transparent": 1},
               {"pillow": 4, "jar": 3, "vase": 3, "bowl": 2, "basin": 1}),
    "yaozhou": (4, 0.9, {"celadon": 4, "yellow_green": 2, "greenish_yellow": 1.5, "green": 0.5},
                {"bowl": 5, "plate": 2, "ewer": 2, "censer": 1, "dish": 1}),
    "jian": (4, 1.0, {"black": 6, "brown": 2}, {"teabowl": 10, "cup": 1}),
    "guang": (1, 0.3, {"green": 2, "brown": 1.5, "sky_blue": 1}, {"jar": 2, "vase": 2, "basin": 1}),
    "huozhou": (1, 0.2, {"white": 3, "transparent": 1}, {"cup": 2, "bowl": 2, "plate": 1}),
    "linchuan": (1, 0.6, {"white": 2, "qingbai": 2}, {"bowl": 2, "water_pot": 1, "box": 1}),
    "dehua": (2, 0.4, {"white": 3, "ivory_white": 2, "qingbai": 1},
              {"box": 3, "cup": 2, "bowl": 1, "water_dropper": 1}),
    "xianghu": (1, 0.8, {"qingbai": 3, "white": 1}, {"bowl": 2, "cup_stand": 1, "ewer": 1}),
    "peng": (1, 0.1, {"white": 2, "ivory_white": 2}, {"bowl": 2, "gui": 1, "plate": 1}),
    "jizhou": (3, 0.85, {"black": 3, "brown": 2, "white": 1, "green": 0.5},
               {"teabowl": 4, "vase": 2, "jar": 1, "brush_pot": 1, "water_pot": 0.5}),
}

# Rare combinations the paper names (Fig. 12, Table 11): kept in the tail whatever the draw.
NAMED_RARE = [
    ("yuan", "jun", "moon_white", "vase"), ("yuan", "longquan", "ivory_white", "vase"),
    ("song", "cizhou", "black", "jar"), ("song", "ding", "ivory_white", "bowl"),
    ("song", "jian", "brown", "cup"), ("song", "jizhou", "white", "teabowl"),
]


@dataclass
class EmbeddedConfig:
    out: str = ""  # where manifest.csv and images/ go
    n: int = 3000  # approximate number of images
    size: int = 128  # image side in pixels
    seed: int = 0  # the collection's render seed: labels, long tail and pixels
    combinations: int = 0  # 0 = scale with n (90 at 3,000 images)
    zipf: float = 1.3  # the long tail's exponent: larger, steeper
    singletons: int = 4  # combinations with a single image (the paper's collection has 4)
    missing_rate: float = 0.03  # rows with an unknown dynasty or kiln, as catalogues have
    workers: int = 2  # rendering processes
    quality: int = 92  # JPEG quality
    # the seed of the pixels alone (None: `seed`): the same labels, row for row, drawn as other objects, e.g.
    # for a judge that must read the collection's labels without having seen any of its images
    image_seed: int | None = None

    def key_settings(self) -> dict:
        """What decides the render, for a study's stage key: `image_seed` only where set (earlier keys hold)."""
        values = asdict(self)
        if values["image_seed"] is None:
            values.pop("image_seed")
        return values


def _all_combinations() -> tuple[list[tuple[str, str, str, str]], np.ndarray]:
    combos, priors = [], []
    total_kiln = sum(v[0] for v in KILN_TABLE.values())
    for kiln, (weight, p_song, glazes, types) in KILN_TABLE.items():
        g_total, t_total = sum(glazes.values()), sum(types.values())
        for dynasty, p_dyn in (("song", p_song), ("yuan", 1 - p_song)):
            if p_dyn <= 0:
                continue
            for glaze, gw in glazes.items():
                for kind, tw in types.items():
                    combos.append((dynasty, kiln, glaze, kind))
                    priors.append(weight / total_kiln * p_dyn * gw / g_total * tw / t_total)
    return combos, np.array(priors)


def combination_counts(config: EmbeddedConfig) -> list[tuple[tuple[str, str, str, str], int]]:
    """Which combinations exist and how many images each gets (Zipf over a prior-weighted ranking)."""
    rng = np.random.default_rng(config.seed)
    combos, priors = _all_combinations()
    m = config.combinations or int(np.clip(config.n // 33, 12, 90))
    m_drawn = max(1, m - len(NAMED_RARE))
    # Gumbel top-k: a prior-weighted draw without replacement, ranked by the perturbed prior.
    keys = np.log(priors) + rng.gumbel(size=len(priors)) * 0.7
    chosen = [combos[i] for i in np.argsort(-keys) if combos[i] not in NAMED_RARE][:m_drawn]
    ranked = chosen + NAMED_RARE[: m - m_drawn]
    ranks = np.arange(1, len(ranked) + 1, dtype=np.float64)
    shape = ranks ** -config.zipf
    amplitude = config.n / shape.sum()
    counts = np.maximum(1, np.floor(amplitude * shape)).astype(int)
    if config.singletons:
        counts[-config.singletons:] = 1
    counts[0] += max(0, config.n - counts.sum())  # the head absorbs rounding, as a museum's common ware would
    return list(zip(ranked, counts.tolist(), strict=True))


def _row_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"demo:{seed}:{index}".encode()).digest()[:8], "little")


def plan_rows(config: EmbeddedConfig) -> pd.DataFrame:
    rng = np.random.default_rng(config.seed + 1)
    rows = []
    for (dynasty, kiln, glaze, kind), count in combination_counts(config):
        for _ in range(count):
            rows.append({"dynasty": dynasty, "kiln": kiln, "glaze": glaze, "type": kind})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=config.seed).reset_index(drop=True)
    frame.insert(0, PATH_COLUMN, [f"images/{i:05d}.jpg" for i in range(len(frame))])
    pixels = config.seed if config.image_seed is None else config.image_seed
    frame["render_seed"] = [_row_seed(pixels, i) for i in range(len(frame))]
    missing = rng.random(len(frame)) < config.missing_rate
    which = rng.choice(["dynasty", "kiln"], size=len(frame))
    for task in ("dynasty", "kiln"):
        frame.loc[missing & (which == task), f"{task}_hidden"] = True
    return frame


def _render_one(args: tuple[str, dict, int, int, int]) -> None:
    target, labels, seed, size, quality = args
    if os.path.exists(target):
        return
    import io

    img = render(Labels(**labels), size, np.random.default_rng(seed))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    atomic_write_bytes(target, buffer.getvalue())


def make_demo(out: str | Path, config: EmbeddedConfig | None = None, progress: bool = True) -> Path:
    """Render the embedded dataset into `out` (images/ + manifest.csv); re-running resumes."""
    config = config or EmbeddedConfig()
    out = Path(out)
    stamp = out / "demo.yaml"
    settings = asdict(config)
    settings.pop("workers")
    settings.pop("out")  # where it is written is not what it is
    if stamp.exists() and yaml.safe_load(stamp.read_text()) != settings:
        raise CeladonError(f"{out} holds a demo set made with other settings ({stamp}); "
                           "choose another folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, yaml.safe_dump(settings))
    frame = plan_rows(config)
    jobs = [
        (str(out / p), {"dynasty": d, "kiln": k, "glaze": g, "type": t}, seed, config.size, config.quality)
        for p, d, k, g, t, seed in frame[[PATH_COLUMN, "dynasty", "kiln", "glaze", "type", "render_seed"]].itertuples(
            index=False)
    ]
    with ProcessPoolExecutor(max_workers=max(1, config.workers)) as pool:
        list(tqdm(pool.map(_render_one, jobs, chunksize=16), total=len(jobs), desc="rendering demo set",
                  disable=not progress))
    for task in ("dynasty", "kiln"):  # labels were used to render, then hidden as a catalogue would lack them
        hidden = frame.pop(f"{task}_hidden") if f"{task}_hidden" in frame else None
        if hidden is not None:
            frame.loc[hidden.fillna(False).astype(bool), task] = None
    manifest = out / "manifest.csv"
    atomic_write_text(manifest, frame.drop(columns="render_seed").to_csv(index=False, lineterminator="\n"))
    write_run_info(out, "data make-demo", replace(config, out=str(out)), config.seed)
    return manifest
