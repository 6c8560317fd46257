"""CIFAR-style ResNets (He et al. 2016): 3x3 stem, no initial max-pool, BasicBlocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedsim.models.base import MODELS, ClassifierModel


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut.

    Parameters
    ----------
    in_planes
        Input channels.
    planes
        Output channels.
    stride
        Stride of the first convolution (and of the projection shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(ClassifierModel):
    """ResNet for small images: stem conv, stages of BasicBlocks, global average pooling.

    The first stage has stride 1, every later stage stride 2. The embedding is the globally
    average-pooled output of the last stage, so any image size >= 8 works.

    Parameters
    ----------
    num_classes
        Number of output classes.
    in_channels
        Number of input channels.
    widths
        Channels of each stage; the stem has ``widths[0]`` channels.
    blocks
        Number of BasicBlocks in each stage (same length as ``widths``).
    """

    def __init__(
        self, num_classes: int, in_channels: int, widths: Sequence[int], blocks: Sequence[int]
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("widths and blocks must have the same length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last-stage output, shape ``[B, embedding_dim]``."""
        return self.pool(self.stages(self.stem(x)))


@MODELS.register("resnet8")
def resnet8(*, num_classes: int, in_channels: int, image_size: int) -> CifarResNet:
    """ResNet-8: 16-channel stem, three stages of one block (16/32/64); embedding dim 64.

    ``image_size`` is accepted for a uniform factory signature; global pooling makes the network
    size-agnostic.
    """
    del image_size
    return CifarResNet(num_classes, in_channels, widths=(16, 32, 64), blocks=(1, 1, 1))


@MODELS.register("resnet18")
def resnet18(*, num_classes: int, in_channels: int, image_size: int) -> CifarResNet:
    """ResNet-18 (CIFAR variant): 64-channel stem, four stages of two blocks (64/128/256/512).

    Embedding dim 512. ``image_size`` is accepted for a uniform factory signature.
    """
    del image_size
    return CifarResNet(num_classes, in_channels, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2))


@MODELS.register("resnet34")
def resnet34(*, num_classes: int, in_channels: int, image_size: int) -> CifarResNet:
    """ResNet-34 (CIFAR variant): ResNet-18's widths with 3/4/6/3 blocks per stage.

    Embedding dim 512 (FedLabel's third-party CIFAR-10 setting uses a ResNet-34). ``image_size``
    is accepted for a uniform factory signature.
    """
    del image_size
    return CifarResNet(num_classes, in_channels, widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3))
