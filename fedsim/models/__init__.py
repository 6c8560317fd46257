"""Model registry: classifiers that expose their penultimate embedding.

Importing this package registers the built-in models (``mlp``, ``cnn``, ``cnn4conv``,
``resnet8``, ``resnet18``, ``resnet34``) in :data:`MODELS`.

Examples
--------
>>> from fedsim.models import build_model
>>> model = build_model("cnn", num_classes=10, in_channels=1, image_size=28)
"""

from __future__ import annotations

from fedsim.models import cnn, mlp, resnet  # noqa: F401  (registers the built-in models)
from fedsim.models.base import MODELS, ClassifierModel, ModelFactory, build_model, model_for

__all__ = ["MODELS", "ClassifierModel", "ModelFactory", "build_model", "model_for"]
