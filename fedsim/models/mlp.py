"""Multi-layer perceptron on flattened images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedsim.errors import invalid
from fedsim.models.base import MODELS, ClassifierModel


class MLP(ClassifierModel):
    """Flatten, then fully connected hidden layers with ReLU, then a linear classifier.

    Parameters
    ----------
    in_features
        ``C * H * W`` of the input.
    num_classes
        Number of output classes.
    hidden
        Widths of the hidden layers; the last one is the embedding dimension. Empty means a
        linear model on the flattened input.
    dropout
        Dropout probability after every hidden layer (0 disables it).
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.embedding_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last hidden layer, shape ``[B, embedding_dim]``."""
        return self.body(x)


@MODELS.register("mlp")
def mlp(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    hidden: Sequence[int] = (200, 200),
    dropout: float = 0.0,
) -> MLP:
    """Build an :class:`MLP` for ``in_channels x image_size x image_size`` inputs."""
    bad_hidden = invalid("model.hidden", hidden, "a list of integers >= 1")
    if isinstance(hidden, str | bytes):
        raise bad_hidden
    try:  # also accepts tuples and OmegaConf ListConfig
        widths = list(hidden)
    except TypeError:
        raise bad_hidden from None
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in widths):
        raise bad_hidden
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise invalid("model.dropout", dropout, "a number in [0, 1)")
    return MLP(in_channels * image_size * image_size, num_classes, widths, float(dropout))
