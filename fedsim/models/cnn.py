"""Small convolutional networks: LeNet-style ``cnn`` and the 4-block ``cnn4conv``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedsim.errors import ConfigError, invalid
from fedsim.models.base import MODELS, ClassifierModel


def _pooled(size: int, times: int) -> int:
    """Spatial size after ``times`` size-preserving convs each followed by ``MaxPool2d(2)``."""
    for _ in range(times):
        size //= 2
    return size


class LeNetCNN(ClassifierModel):
    """LeNet-style CNN (as in FedAvg's MNIST CNN).

    ``conv5x5(32)-ReLU-maxpool2, conv5x5(64)-ReLU-maxpool2, flatten, fc(hidden)-ReLU`` (the
    embedding), then a linear classifier. Convolutions use padding 2, so any image size >= 4
    works; the flatten dimension is ``64 * (image_size // 4) ** 2``.

    Parameters
    ----------
    num_classes
        Number of output classes.
    in_channels
        Number of input channels.
    image_size
        Height and width of the inputs.
    hidden
        Width of the fully connected embedding layer.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        hidden: int,
        channels: tuple[int, int] | tuple[int, ...] = (32, 64),
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = c2 * _pooled(image_size, 2) ** 2
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(inplace=True))
        self.embedding_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the fully connected layer after ReLU, shape ``[B, hidden]``."""
        return self.fc(self.conv(x))


class CNN4Conv(ClassifierModel):
    """Four ``[conv3x3(64), BatchNorm2d, ReLU, MaxPool2d(2)]`` blocks, flatten, linear classifier.

    The common few-shot / FL "Conv-4" backbone. The embedding is the flattened output of the last
    block: ``64 * (image_size // 16) ** 2`` (64 for 28x28 inputs, 256 for 32x32). The classifier
    bias is initialised to zero.

    Parameters
    ----------
    num_classes
        Number of output classes.
    in_channels
        Number of input channels.
    image_size
        Height and width of the inputs (>= 16).
    width
        Channels of every convolution (reference: 64; smaller values make CPU runs cheaper).
    """

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, width: int = 64
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        blocks.append(nn.Flatten())
        self.body = nn.Sequential(*blocks)
        self.embedding_dim = width * _pooled(image_size, 4) ** 2
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened output of the fourth block, shape ``[B, embedding_dim]``."""
        return self.body(x)


@MODELS.register("cnn")
def cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    hidden: int = 512,
    channels: Sequence[int] = (32, 64),
) -> LeNetCNN:
    """Build a :class:`LeNetCNN`; ``hidden`` is the embedding width (default 512) and
    ``channels`` the widths of the two convolutions (default 32, 64)."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise invalid("model.hidden", hidden, "an integer >= 1")
    chans = tuple(channels)
    if len(chans) != 2 or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in chans
    ):
        raise invalid("model.channels", list(chans), "two integers >= 1")
    return LeNetCNN(num_classes, in_channels, image_size, hidden, chans)


@MODELS.register("cnn4conv")
def cnn4conv(*, num_classes: int, in_channels: int, image_size: int, width: int = 64) -> CNN4Conv:
    """Build a :class:`CNN4Conv`; needs ``image_size >= 16`` (four 2x poolings); ``width`` is the
    channel count of every convolution (default 64, the reference)."""
    if image_size < 16:
        raise ConfigError(f"model 'cnn4conv' needs image_size >= 16, got {image_size}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise invalid("model.width", width, "an integer >= 1")
    return CNN4Conv(num_classes, in_channels, image_size, width)
