"""Networks: the ConvNet family of the distillation literature, and ResNet-18 from torchvision.

ConvNet-D (width W): D blocks of [3x3 conv (W channels), instance norm, ReLU, 2x2 average
pool], then a linear classifier. Instance norm is ``GroupNorm(W, W)`` (affine), as in the
DC/DSA/RaT-BPTT code. The default depth is sized from the input: 3 for 32x32, 4 for 64x64
(the feature map ends at 4x4); 28x28 inputs (MNIST) get a padding of 3 in the first
convolution so that they are seen as 32x32, like the official code.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torchvision
from pydantic import BaseModel, ConfigDict, model_validator

from harness.core.process import seeded


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["convnet", "resnet18"] = "convnet"
    width: int = 128  # convnet only
    depth: int | None = None  # convnet only; None = sized from the input (3 for 32x32, 4 for 64x64)
    norm: Literal["instancenorm", "batchnorm", "none"] = "instancenorm"  # convnet only
    pooling: Literal["avgpooling", "maxpooling"] = "avgpooling"  # convnet only

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.depth is not None and self.depth <= 0:
            raise ValueError(f"depth must be > 0, got {self.depth}")
        return self


def default_depth(size: int) -> int:
    """ConvNet depth that pools the input down to 4x4 (32 -> 3, 64 -> 4), at least 1."""
    size = 32 if size == 28 else size
    return max(1, round(math.log2(size)) - 2)


class ConvNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, size: int, width: int = 128, depth: int | None = None,
                 norm: str = "instancenorm", pooling: str = "avgpooling"):
        super().__init__()
        depth = depth or default_depth(size)
        layers: list[nn.Module] = []
        in_ch, feat = channels, size
        for d in range(depth):
            pad = 3 if (size == 28 and d == 0) else 1  # 28x28 -> 32x32, as the official ConvNet
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=pad))
            feat += 2 * pad - 2
            if norm == "instancenorm":
                layers.append(nn.GroupNorm(width, width, affine=True))
            elif norm == "batchnorm":
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            layers.append(nn.AvgPool2d(2) if pooling == "avgpooling" else nn.MaxPool2d(2))
            in_ch, feat = width, feat // 2
        if feat < 1:
            raise ValueError(f"depth {depth} pools a {size}x{size} input below 1x1")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * feat * feat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The features the classifier reads (the last block's output, flattened): the DC/DSA/DM
        ConvNet's ``embed``."""
        return self.features(x).flatten(1)


def resnet18(channels: int, num_classes: int, size: int) -> nn.Module:
    """torchvision's ResNet-18, with the usual small-image stem (3x3 stride-1 conv, no max pool)."""
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if size <= 64:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features ``model``'s final linear layer reads: a ConvNet's :meth:`ConvNet.embed`, a
    torchvision ResNet's pooled features (everything but ``fc``)."""
    if isinstance(model, ConvNet):
        return model.embed(x)
    if isinstance(model, torchvision.models.ResNet):
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1)
    raise TypeError(f"no embedding is defined for a {type(model).__name__}")


def create_model(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"square images expected, got {height}x{width}")
    if cfg.name == "resnet18":
        return resnet18(channels, num_classes, height)
    return ConvNet(channels, num_classes, height, cfg.width, cfg.depth, cfg.norm, cfg.pooling)


def reinitialize(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of ``module`` with its layers' default init, from ``seed``.

    Used for a fresh inner network at every outer step without rebuilding the module.
    """
    with seeded(seed, module_device(module)):
        for m in module.modules():
            if m is not module and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return module


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
