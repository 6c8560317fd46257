"""Tests for the model registry (fedsim.models)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedsim.errors import ConfigError
from fedsim.models import MODELS, ClassifierModel, build_model

NUM_CLASSES = 5
BATCH = 2


def _build(name: str, in_channels: int, image_size: int, **params: object) -> ClassifierModel:
    return build_model(
        name,
        num_classes=NUM_CLASSES,
        in_channels=in_channels,
        image_size=image_size,
        params=params or None,
    )


def _check_model(model: ClassifierModel, in_channels: int, image_size: int) -> None:
    x = torch.randn(BATCH, in_channels, image_size, image_size)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))

    model.eval()
    with torch.no_grad():
        logits = model(x)
        logits2, emb = model.forward_with_features(x)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert emb.shape == (BATCH, model.embedding_dim)
    assert torch.allclose(logits, logits2)
    assert torch.allclose(model.classifier(emb), logits)
    assert model.num_classes == NUM_CLASSES

    model.train()
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname


def test_builtin_models_registered() -> None:
    assert {"mlp", "cnn", "cnn4conv", "resnet8", "resnet18", "resnet34"} <= set(MODELS.names())


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("image_size", [28, 32])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward(name: str, image_size: int, in_channels: int) -> None:
    torch.manual_seed(0)
    model = _build(name, in_channels, image_size)
    assert isinstance(model, ClassifierModel)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.embedding_dim
    _check_model(model, in_channels, image_size)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_small_digits(name: str) -> None:
    torch.manual_seed(0)
    _check_model(_build(name, 1, 8), 1, 8)


def test_mlp_in_features_and_hidden() -> None:
    model = _build("mlp", 1, 8, hidden=[16, 7])
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 64
    assert model.embedding_dim == 7
    linear = _build("mlp", 3, 28, hidden=())
    assert linear.embedding_dim == 3 * 28 * 28
    _check_model(_build("mlp", 1, 28, hidden=(32,), dropout=0.5), 1, 28)


@pytest.mark.parametrize(("image_size", "dim"), [(28, 64), (32, 256)])
def test_cnn4conv_embedding_dim(image_size: int, dim: int) -> None:
    model = _build("cnn4conv", 3, image_size)
    assert model.embedding_dim == dim
    assert model.classifier.in_features == dim


def test_cnn4conv_bias_zero_at_init() -> None:
    torch.manual_seed(0)
    model = _build("cnn4conv", 1, 28)
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert torch.count_nonzero(model.classifier.weight) > 0


def test_cnn_flatten_dims() -> None:
    for size, side in [(28, 7), (32, 8), (8, 2)]:
        model = _build("cnn", 1, size)
        assert model.fc[0].in_features == 64 * side * side
        assert model.embedding_dim == 512


def test_resnet_dims() -> None:
    assert _build("resnet8", 3, 32).embedding_dim == 64
    assert _build("resnet18", 3, 32).embedding_dim == 512
    assert _build("resnet34", 3, 32).embedding_dim == 512


def test_unknown_model_lists_names() -> None:
    with pytest.raises(ConfigError, match="mlp"):
        _build("no-such-model", 1, 28)


def test_unknown_param_named() -> None:
    with pytest.raises(ConfigError, match="'hiden'") as info:
        _build("mlp", 1, 28, hiden=[10])
    assert "hidden" in str(info.value) and "dropout" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="'width'"):
        _build("resnet8", 3, 32, width=2)


def test_shape_args_not_allowed_as_params() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        _build("mlp", 1, 28, num_classes=3)


@pytest.mark.parametrize(
    ("num_classes", "in_channels", "image_size"),
    [(1, 1, 28), (10, 0, 28), (10, 1, 7), (True, 1, 28), (10, 1, 28.0)],
)
def test_invalid_shapes(num_classes: int, in_channels: int, image_size: int) -> None:
    with pytest.raises(ConfigError):
        build_model("mlp", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def test_invalid_param_values() -> None:
    with pytest.raises(ConfigError, match="hidden"):
        _build("mlp", 1, 28, hidden=[10, 0])
    with pytest.raises(ConfigError, match="hidden"):
        _build("mlp", 1, 28, hidden=200)
    with pytest.raises(ConfigError, match="dropout"):
        _build("mlp", 1, 28, dropout=1.5)
    with pytest.raises(ConfigError, match="16"):
        _build("cnn4conv", 1, 8)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="mlp"):
        MODELS.register("mlp")(lambda **_: None)


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_init(name: str) -> None:
    torch.manual_seed(123)
    a = _build(name, 3, 32).state_dict()
    torch.manual_seed(123)
    b = _build(name, 3, 32).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    torch.manual_seed(124)
    c = _build(name, 3, 32).state_dict()
    assert any(
        not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1
    )


def test_param_count_sane() -> None:
    n = sum(p.numel() for p in _build("resnet18", 3, 32).parameters())
    assert math.isclose(n, 11.17e6, rel_tol=0.01)


def test_resnet34_has_torchvisions_blocks_with_a_cifar_stem_and_head() -> None:
    # torchvision's resnet34 has 21.80M parameters; the CIFAR variant drops its 7x7 stem (9,408)
    # and 1000-way head (513,000) for a 3x3 stem (1,728) and a 10-way head (5,130): 21.28M.
    n = sum(p.numel() for p in _build("resnet34", 3, 32).parameters())
    assert math.isclose(n, 21.28e6, rel_tol=0.002)
    blocks = [len(stage) for stage in _build("resnet34", 3, 32).stages]
    assert blocks == [3, 4, 6, 3]
