"""FID and KID between two image sets, with torchmetrics.

Inception-v3 features need local weights (`inception`, torchmetrics + torch-fidelity); without them the
pooled features of the pip-shipped ImageNet EfficientNet-Lite0 are used and every output says so: such
numbers compare runs of this project, never published FIDs.
"""

from __future__ import annotations

import hashlib
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

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        return self.backbone((x - self.mean) / self.std).double()


class _GivenFeatures(nn.Module):
    """Features extracted already, passed through to torchmetrics: one extraction serves FID and KID."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


# A study's QC runs compare each synthetic set with the same real reference: its features are extracted once per
# process. Keyed by the images' bytes, the extractor and the batching, so a hit is exactly what would be computed.
_REAL_FEATURES: dict[tuple[str, str, str, int], list[torch.Tensor]] = {}
_REAL_FEATURES_KEPT = 4


def _batch_features(extractor: nn.Module, array: np.ndarray, batch_size: int, device: str) -> list[torch.Tensor]:
    with torch.no_grad():
        return [extractor(torch.from_numpy(np.ascontiguousarray(array[start:start + batch_size]))
                          .permute(0, 3, 1, 2).to(device)) for start in range(0, len(array), batch_size)]


def _real_features(extractor: nn.Module, label: str, real: np.ndarray, batch_size: int,
                   device: str) -> list[torch.Tensor]:
    key = (hashlib.sha256(np.ascontiguousarray(real).data).hexdigest() + str(real.shape), label, str(device),
           batch_size)
    if key not in _REAL_FEATURES:
        while len(_REAL_FEATURES) >= _REAL_FEATURES_KEPT:
            _REAL_FEATURES.pop(next(iter(_REAL_FEATURES)))
        _REAL_FEATURES[key] = _batch_features(extractor, real, batch_size, device)
    return _REAL_FEATURES[key]


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
        try:  # torchmetrics' own Inception-v3, loaded from the local file
            extractor = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=inception).inception
        except (ModuleNotFoundError, FileNotFoundError, RuntimeError) as exc:
            raise CeladonError(f"cannot use Inception weights {inception}: {exc}") from None
        label, width = f"Inception-v3 pool3 ({inception})", 2048
    else:
        extractor, label, width = Lite0Features(), LITE0_LABEL, 1280
    extractor = extractor.to(device).eval()
    fid = FrechetInceptionDistance(feature=_GivenFeatures(width)).to(device)
    kid = KernelInceptionDistance(feature=_GivenFeatures(width), subset_size=subset).to(device)
    for features, is_real in ((_real_features(extractor, label, real, batch_size, device), True),
                              (_batch_features(extractor, synthetic, batch_size, device), False)):
        for batch in features:
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    with torch.random.fork_rng():  # torchmetrics draws KID's subsets from torch's global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return Distances(float(fid.compute()), float(kid_mean), float(kid_std), label, len(real), len(synthetic))
