"""Source photos for structure-preserving generation (img2img): which real *training* photo each plan item
starts from.

An img2img item keeps its source's vessel (shape, pose, backdrop, decoration) and re-renders the label of
the taxonomy's confusion role (porcelain: the glaze) from the prompt, as DA-Fusion, Diff-Mix and SaSPA do.
So a source must share the item's other labels ("structure": dynasty, kiln, type); where no unused photo
does, the match is relaxed one task at a time, the combination role's tasks (type) kept longest.

Among the candidates, a photo of the target's own class of the rendered task comes first (DA-Fusion: on
the demo it keeps more glazes recognisable than translating from another glaze: 39.6% vs 34.1% at CFG 3,
strength 0.5); `translate=True` puts *another* class first (Diff-Mix's inter-class translation). A
confusion item b of the pair a-b always starts from a photo of a where one fits. Then the least-used photo,
then a hash of the item's seed and the photo's path as the manifest writes it: deterministic wherever the
study folder lives, and no photo is used more than `max_uses` times while another candidate is free.
Validation and test photos are never sources.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from celadon.data.manifest import PATH_COLUMN, Manifest
from celadon.errors import CeladonError

SOURCE_COLUMN = "source"  # the source photo's absolute path (a manifest column rebased like any source)
SHARED_COLUMN = "source_shared"  # the tasks whose label the item shares with its source ("dynasty,kiln,type")


def training_photos(real: Manifest) -> Manifest:
    """The pool: real training originals (no augmented copy, never a validation or test photo)."""
    keep = real.augmentation_seeds() < 0
    if "split" in real.frame:
        keep &= (real.frame["split"] == "train").to_numpy()
    pool = real.subset(keep)
    if not len(pool):
        raise CeladonError(f"{real.source}: no real training photos to start img2img from")
    return pool


def structure_tasks(tasks: list[str], rendered: str, combination: tuple[str, ...]) -> list[str]:
    """The tasks a source must match, in the order they are relaxed (first = dropped first)."""
    kept = [t for t in tasks if t != rendered]
    return [t for t in kept if t not in combination] + [t for t in kept if t in combination]


def _tiebreak(seed: int, path: str) -> int:
    return int.from_bytes(hashlib.sha256(f"source:{seed}:{path}".encode()).digest()[:8], "little")


def assign_sources(plan: pd.DataFrame, real: Manifest, max_uses: int = 2, translate: bool = False) -> pd.DataFrame:
    """`plan` with a `source` photo and the tasks it shares (`source_shared`) for every item."""
    taxonomy = real.taxonomy
    rendered = taxonomy.confusion
    pool = training_photos(real)
    paths = [str(p.resolve()) for p in pool.image_paths()]
    names = [str(v) for v in pool.frame[PATH_COLUMN]]  # as the manifest writes them: the same on every machine
    labels = pool.frame[pool.tasks].astype(object).where(pool.frame[pool.tasks].notna(), None)
    structure = structure_tasks(pool.tasks, rendered, taxonomy.combination)
    tiers = [structure[i:] for i in range(len(structure) + 1)]
    uses = np.zeros(len(pool), dtype=int)
    values = {t: labels[t].to_numpy() for t in pool.tasks}
    sources, shared = [], []
    for item in plan.to_dict("records"):
        partner = item.get("pair_with")
        prefer = (values[rendered] == partner) if isinstance(partner, str) and partner else (
            values[rendered] != item[rendered] if translate else values[rendered] == item[rendered])
        chosen = None
        for tier in tiers:
            match = np.ones(len(pool), dtype=bool)
            for task in tier:
                match &= values[task] == item[task]
            free = match & (uses < max_uses) if max_uses else match
            if free.any():
                chosen = min(np.flatnonzero(free), key=lambda i: (not prefer[i], uses[i],
                                                                   _tiebreak(int(item["seed"]), names[i])))
                break
        if chosen is None:  # every candidate is used max_uses times: the least used of all
            chosen = min(range(len(pool)), key=lambda i: (uses[i], _tiebreak(int(item["seed"]), names[i])))
        uses[chosen] += 1
        sources.append(paths[chosen])
        shared.append(",".join(t for t in pool.tasks if values[t][chosen] is not None
                               and values[t][chosen] == item.get(t)))
    return plan.assign(**{SOURCE_COLUMN: sources, SHARED_COLUMN: shared})


def source_images(batch: pd.DataFrame, size: int) -> list:
    """Each item's source photo as img2img starts from it (and replay shows it): a `size` px square."""
    from PIL import Image

    from celadon.data.images import load_image, resize_square

    return [Image.fromarray(resize_square(load_image(path), size)) for path in batch[SOURCE_COLUMN]]
