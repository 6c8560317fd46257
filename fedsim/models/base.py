"""The model registry, the :class:`ClassifierModel` base class and :func:`build_model`.

Every model is a classifier that exposes its penultimate embedding, so that learners that need
features (prototypes, contrastive losses, feature-space defenses) can use any registered model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedsim.errors import invalid
from fedsim.registry import Registry

ModelFactory = Callable[..., "ClassifierModel"]

MODELS: Registry[ModelFactory] = Registry("model")
"""Registry of model factories.

A factory takes keyword arguments ``num_classes``, ``in_channels`` and ``image_size`` plus its own
hyper-parameters, and returns a :class:`ClassifierModel`.
"""

_SHAPE_ARGS = ("num_classes", "in_channels", "image_size")
_NAMED_KINDS = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_MINIMA = {"num_classes": 2, "in_channels": 1, "image_size": 8}


class ClassifierModel(nn.Module):
    """Base class of every fedsim model: an embedding network followed by a linear classifier.

    Subclasses implement :meth:`features` and set ``self.classifier`` (an :class:`torch.nn.Linear`
    from ``embedding_dim`` to the number of classes) and ``self.embedding_dim``.

    Inputs are float tensors of shape ``[B, C, H, W]``, already normalised.
    """

    classifier: nn.Linear
    embedding_dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding.

        Parameters
        ----------
        x
            Input batch, shape ``[B, C, H, W]``.

        Returns
        -------
        torch.Tensor
            Embedding of shape ``[B, embedding_dim]``.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[B, num_classes]``."""
        return self.classifier(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embedding in one pass.

        Returns
        -------
        tuple of torch.Tensor
            ``(logits [B, num_classes], embedding [B, embedding_dim])``.
        """
        emb = self.features(x)
        return self.classifier(emb), emb

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.classifier.out_features


def _check_int(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(key, value, f"an integer >= {minimum}")
    return value


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    params: Mapping[str, Any] | None = None,
) -> ClassifierModel:
    """Build a registered model.

    Parameters
    ----------
    name
        Registered model name (see ``MODELS.names()``).
    num_classes
        Number of output classes (>= 2).
    in_channels
        Number of input channels (>= 1).
    image_size
        Height and width of the (square) input images (>= 8).
    params
        The model's own hyper-parameters, e.g. ``{"hidden": [200, 200]}`` for ``mlp``.

    Returns
    -------
    ClassifierModel
        The freshly initialised model (default PyTorch init, so deterministic under
        ``torch.manual_seed``).

    Raises
    ------
    ConfigError
        For an unknown model name, a parameter the model does not accept, or an invalid value.
    """
    MODELS.get(name)  # an unknown name first
    shape = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    for key, value in shape.items():
        _check_int(f"model.{key}", value, _MINIMA[key])
    model = MODELS.build(name, dict(params or {}), prefix="model", fixed=shape)
    if not isinstance(model, ClassifierModel):  # pragma: no cover - programming error
        raise TypeError(f"model factory {name!r} returned {type(model).__name__}")
    return model


def model_for(cfg: Any, data: Any) -> ClassifierModel:
    """The model of a fedsim config (``cfg.model``) shaped for ``data`` (a
    :class:`~fedsim.data.DatasetArrays`: classes, channels, image size); freshly initialised.

    In an open-set FAL run whose query strategy reads a federated detector
    (:func:`fedsim.osal.federated_detector`), it is a :class:`~fedsim.models.pair.DetectorPair`:
    the K-class target, then a (K + 1)-class detector built right after it.
    """

    def one(num_classes: int) -> ClassifierModel:
        return build_model(
            str(cfg.model.name),
            num_classes=num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            params=dict(cfg.model.get("params") or {}),
        )

    from fedsim.osal import federated_detector

    target = one(data.num_classes)
    if federated_detector(cfg) is None:
        return target
    from fedsim.models.pair import DetectorPair

    return DetectorPair(target, one(data.num_classes + 1))
