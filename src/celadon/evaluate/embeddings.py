"""t-SNE of real vs synthetic images (paper Fig. 6-7): do synthetic images land among the real images of
their label, or in a region of their own?

Features are the same pooled EfficientNet-Lite0 ImageNet features FID/KID use here (`distances.py`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from celadon.data.images import load_image  # noqa: E402
from celadon.data.manifest import Manifest, read_manifest  # noqa: E402
from celadon.device import resolve_device  # noqa: E402
from celadon.runinfo import atomic_write_text  # noqa: E402
from celadon.taxonomy import load_taxonomy  # noqa: E402

FEATURE_SIZE = 128  # images are decoded at this size, then resized to 224 by the extractor


def _sample(manifest: Manifest, n: int, seed: int) -> Manifest:
    if len(manifest) <= n:
        return manifest
    keep = np.zeros(len(manifest), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(manifest), n, replace=False)] = True
    return manifest.subset(keep)


@torch.no_grad()
def image_features(manifest: Manifest, batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    from celadon.data.images import resize_square
    from celadon.evaluate.distances import Lite0Features

    extractor = Lite0Features().to(device)
    paths = manifest.image_paths()
    chunks = []
    for start in range(0, len(paths), batch_size):
        pixels = np.stack([resize_square(load_image(p), FEATURE_SIZE) for p in paths[start:start + batch_size]])
        chunks.append(extractor(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 1280), dtype=np.float32)


def tsne_real_vs_synthetic(splits: str | Path, synthetic: dict[str, str | Path], out_dir: str | Path,
                           per_set: int = 300, seed: int = 0, taxonomy: str | None = None,
                           label_task: str | None = None, device: str = "auto") -> Path:
    """Embed up to `per_set` real training images and as many of each synthetic set; write `tsne.csv` and
    `tsne.png` (left: by set; right: by `label_task`, default the taxonomy's confusion role, real as dots and
    synthetic as crosses)."""
    from sklearn.manifold import TSNE

    tax = load_taxonomy(taxonomy)
    label_task = label_task or tax.confusion
    real = read_manifest(splits, tax)
    real = real.subset((real.frame["split"] == "train").to_numpy() & (real.augmentation_seeds() < 0))
    sets = {"real": _sample(real, per_set, seed)}
    sets |= {name: _sample(read_manifest(table, tax), per_set, seed) for name, table in synthetic.items()}
    device = resolve_device(device)
    features = np.concatenate([image_features(m, device=device) for m in sets.values()])
    frame = pd.concat([pd.DataFrame({"set": name, label_task: m.frame[label_task].to_numpy(),
                                     "path": [str(p) for p in m.image_paths()]}) for name, m in sets.items()],
                      ignore_index=True)
    perplexity = float(min(30, max(2, (len(frame) - 1) / 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        (features - features.mean(0)) / (features.std(0) + 1e-6))
    frame["x"], frame["y"] = xy[:, 0].round(3), xy[:, 1].round(3)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tsne.csv", frame.to_csv(index=False))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.5))
    for name, part in frame.groupby("set", sort=False):
        left.scatter(part["x"], part["y"], s=9, alpha=0.7, label=f"{name} ({len(part)})")
    left.set_title("real vs synthetic (EfficientNet-Lite0 features)")
    left.legend(fontsize=8)
    labels = [c for c in frame[label_task].dropna().value_counts().index[:10]]
    colours = dict(zip(labels, plt.get_cmap("tab10").colors, strict=False))
    for (is_real, code), part in frame[frame[label_task].isin(labels)].groupby(
            [frame["set"] == "real", label_task], sort=False):
        right.scatter(part["x"], part["y"], s=10 if is_real else 22, marker="o" if is_real else "x",
                      color=colours[code], alpha=0.6 if is_real else 0.9, label=code if is_real else None)
    right.set_title(f"by {label_task}: real (dots) vs synthetic (crosses), 10 most common")
    right.legend(fontsize=7, ncol=2)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "tsne.png", dpi=90)
    plt.close(fig)
    return out / "tsne.png"
