"""FID and KID between two image sets, with torchmetrics.

Inception-v3 features need local weights (`inception`, torchmetrics + torch-fidelity); without them the
pooled features of the pip-shipped ImageNet EfficientNet-Lite0 are used and every output says so: such
numbers compare runs of this project, never published FIDs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from celadon.errors import CeladonError

LITE0_LABEL = "EfficientNet-Lite0 ImageNet pooled features (not comparable with published Inception FID)"


class Lite0Features(nn.Module):
    """uint8 NCHW images -> 1280-d pooled EfficientNet-Lite0 features, at 224 px."""

    def __init__(self):
        super().__init__()
        from celadon.classify.models import ModelConfig, MultiTaskNet

        net = MultiTaskNet(ModelConfig("efficientnet_lite0", "auto", {"features": 1}, projection=False)).eval()
        self.backbone = net.backbone
        self.register_buffer("mean", torch.tensor(net.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(net.std).view(1, 3, 1, 1) * 255)

        self._last: tuple[tuple, torch.Tensor] | None = None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # FID and KID are updated with the same batch one after the other: compute its features once.
        key = (images.data_ptr(), tuple(images.shape), images.dtype)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        x = F.interpolate(images.float(), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        features = self.backbone((x - self.mean) / self.std).double()
        self._last = (key, features)
        return features


@dataclass
class Distances:
    fid: float
    kid_mean: float
    kid_std: float
    features: str
    n_real: int
    n_synthetic: int


def image_distances(real: np.ndarray, synthetic: np.ndarray, inception: str | None = None,
                    batch_size: int = 32, seed: int = 0, device: str = "cpu") -> Distances:
    """FID and KID of two uint8 NHWC arrays of the same size. KID's random subsets come from `seed`, so the same
    images always give the same figures (a resumed study's results equal an uninterrupted one's)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if len(real) < 2 or len(synthetic) < 2:
        raise CeladonError(f"FID/KID need at least 2 images per set (have {len(real)} real, {len(synthetic)} "
                           "synthetic)")
    subset = min(1000, len(real), len(synthetic))
    # KID keeps every feature vector (1280 floats per image): warned about by torchmetrics, intended here.
    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
    if inception:
        try:
            fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=inception)
            kid = KernelInceptionDistance(feature=2048, subset_size=subset, feature_extractor_weights_path=inception)
        except (ModuleNotFoundError, FileNotFoundError, RuntimeError) as exc:
            raise CeladonError(f"cannot use Inception weights {inception}: {exc}") from None
        label = f"Inception-v3 pool3 ({inception})"
    else:
        extractor = Lite0Features()
        fid = FrechetInceptionDistance(feature=extractor, input_img_size=(3, 224, 224))
        kid = KernelInceptionDistance(feature=extractor, subset_size=subset)
        label = LITE0_LABEL
    fid, kid = fid.to(device), kid.to(device)
    for array, is_real in ((real, True), (synthetic, False)):
        for start in range(0, len(array), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(array[start:start + batch_size])).permute(0, 3, 1, 2)
            batch = batch.to(device)
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    with torch.random.fork_rng():  # torchmetrics draws KID's subsets from torch's global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return Distances(float(fid.compute()), float(kid_mean), float(kid_std), label, len(real), len(synthetic))
