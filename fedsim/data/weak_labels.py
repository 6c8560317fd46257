"""Weak-label generators: seeded, pure functions from true labels to a client's weak labels.

Each generator is registered by name in :data:`WEAK_LABELS` with the kind of labels it produces
(``clean``, ``noisy``, ``partial``, ``semi``; the learners' capability flags use the same kinds).
A generator takes the client's true labels, the class count, a NumPy generator and its own keyword
parameters (plus the client's images for instance-dependent noise) and returns :class:`WeakLabels`:
the labels a learner sees and, separately, the realised quality measured against the truth.

Conventions (spec ``ssfl_weak_supervision.md`` section 4):

- ``y`` holds the given label, or ``-1`` where the sample has no single label (unlabeled samples of
  ``semi``; every sample of ``partial``, whose labels are candidate sets).
- ``candidates`` (``partial`` only) is an ``n x C`` bool matrix of candidate sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.errors import ConfigError, invalid
from fedsim.registry import Registry

#: name -> generator; ``WEAK_LABELS.meta(name)["kind"]`` is the label kind it produces.
WEAK_LABELS: Registry[Callable[..., WeakLabels]] = Registry("weak_labels")

NOISE_TYPES = ("symmetric", "pair", "asymmetric", "instance")
SYMMETRIC_CONVENTIONS = ("exclude_true", "include_true")


@dataclass
class WeakLabels:
    """One client's weak labels and their realised quality.

    Attributes
    ----------
    kind
        ``clean`` | ``noisy`` | ``partial`` | ``semi``.
    y
        Given labels (int64), ``-1`` where there is no single label.
    candidates
        ``n x C`` bool candidate sets (``partial``), else ``None``.
    stats
        Realised quality, see :func:`label_quality`.
    """

    kind: str
    y: np.ndarray
    candidates: np.ndarray | None = None
    stats: dict[str, float] = field(default_factory=dict)


def label_quality(
    true: np.ndarray, y: np.ndarray, candidates: np.ndarray | None
) -> dict[str, float]:
    """Realised label quality of one client against its true labels.

    Returns
    -------
    dict
        ``n``; ``labeled`` (samples with a single given label); ``noise_rate`` (fraction of labeled
        samples whose label differs from the truth; 0 when none is labeled); ``mean_candidates``
        (mean candidate-set size, 1 for single labels, over samples with any label);
        ``coverage`` (fraction of those whose label or set contains the truth).
    """
    n = int(len(true))
    labeled = y >= 0
    n_lab = int(labeled.sum())
    noise = float((y[labeled] != true[labeled]).mean()) if n_lab else 0.0
    if candidates is not None:
        sizes = candidates.sum(1)
        has = sizes > 0
        mean_c = float(sizes[has].mean()) if has.any() else 0.0
        cover = float(candidates[np.arange(n), true][has].mean()) if has.any() else 0.0
    else:
        mean_c = 1.0 if n_lab else 0.0
        cover = 1.0 - noise if n_lab else 0.0
    return {
        "n": float(n),
        "labeled": float(n_lab),
        "noise_rate": noise,
        "mean_candidates": mean_c,
        "coverage": cover,
    }


def _rate(name: str, value: Any, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise invalid(name, value, f"a number in [0, {high:g}]")
    return float(value)


def _finish(kind: str, true: np.ndarray, y: np.ndarray, cand: np.ndarray | None) -> WeakLabels:
    return WeakLabels(kind=kind, y=y, candidates=cand, stats=label_quality(true, y, cand))


@WEAK_LABELS.register("clean", kind="clean")
def clean(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> WeakLabels:
    """The true labels."""
    y = np.asarray(labels, dtype=np.int64).copy()
    return _finish("clean", y, y.copy(), None)


def parse_class_map(class_map: Any, num_classes: int) -> np.ndarray:
    """``{source: target}`` (or a list, ``target = list[source]``) as a length-C array; classes
    not named map to themselves."""
    out = np.arange(num_classes)
    items: Any
    if isinstance(class_map, Mapping):
        items = class_map.items()
    elif isinstance(class_map, list | tuple):
        items = enumerate(class_map)
    else:
        raise invalid("weak_labels.class_map", class_map, "a {source: target} mapping or a list")
    for src, dst in items:
        s, d = int(src), int(dst)
        if not (0 <= s < num_classes and 0 <= d < num_classes):
            raise invalid("weak_labels.class_map", class_map, f"classes in [0, {num_classes})")
        out[s] = d
    return out


@WEAK_LABELS.register("noisy", kind="noisy")
def noisy(
    labels: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    *,
    noise_type: str = "symmetric",
    rate: float = 0.4,
    symmetric_convention: str = "exclude_true",
    class_map: Any = None,
    instance_std: float = 0.1,
    x: np.ndarray | None = None,
) -> WeakLabels:
    """Noisy single labels.

    Parameters
    ----------
    noise_type
        ``symmetric``: exactly ``round(rate * n)`` samples get a uniformly drawn label, from the
        other C-1 classes (``symmetric_convention=exclude_true``, realised rate = ``rate``) or from
        all C (``include_true``, DivideMix/DPC; realised rate about ``rate (C-1)/C``).
        ``pair``: exactly ``round(rate * n)`` samples flip ``c -> c+1 mod C`` (Co-teaching).
        ``asymmetric``: each sample of a class ``c`` with ``class_map[c] != c`` flips to
        ``class_map[c]`` with probability ``rate`` (e.g. DivideMix's CIFAR-10 map).
        ``instance``: per sample a flip rate ``q_i ~ N(rate, instance_std^2)`` clipped to [0, 1];
        a flipped sample takes a wrong class drawn by the softmax of a random projection of its
        image (after Xia et al. 2020, recalled and unverified; project choice).
    rate
        Noise rate in [0, 1].
    x
        The client's images (``instance`` only).
    """
    true = np.asarray(labels, dtype=np.int64)
    rate = _rate("weak_labels.rate", rate)
    n = len(true)
    y = true.copy()
    if noise_type not in NOISE_TYPES:
        raise invalid("weak_labels.noise_type", noise_type, ", ".join(NOISE_TYPES))
    if noise_type in ("symmetric", "pair"):
        flip = rng.permutation(n)[: int(round(rate * n))]
        if noise_type == "pair":
            y[flip] = (true[flip] + 1) % num_classes
        elif symmetric_convention == "exclude_true":
            shift = rng.integers(1, num_classes, size=len(flip))
            y[flip] = (true[flip] + shift) % num_classes
        elif symmetric_convention == "include_true":
            y[flip] = rng.integers(0, num_classes, size=len(flip))
        else:
            raise invalid(
                "weak_labels.symmetric_convention",
                symmetric_convention,
                ", ".join(SYMMETRIC_CONVENTIONS),
            )
    elif noise_type == "asymmetric":
        if class_map is None:
            raise ConfigError(
                "weak_labels.noise_type=asymmetric needs weak_labels.class_map "
                "(e.g. {9: 1, 2: 0, 4: 7, 3: 5, 5: 3})"
            )
        target = parse_class_map(class_map, num_classes)
        flips = rng.random(n) < rate
        y[flips] = target[true[flips]]
    else:  # instance
        if x is None:
            raise ConfigError("weak_labels.noise_type=instance needs the client's images")
        feats = np.asarray(x, dtype=np.float32).reshape(n, -1) / 255.0
        feats = feats - feats.mean(0, keepdims=True)
        proj = rng.standard_normal((feats.shape[1], num_classes)).astype(np.float32)
        logits = feats @ proj
        logits /= logits.std() + 1e-8
        logits[np.arange(n), true] = -np.inf
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = np.clip(rng.normal(rate, instance_std, size=n), 0.0, 1.0)
        flips = rng.random(n) < q
        cum = p[flips].cumsum(1)
        u = rng.random((int(flips.sum()), 1))
        y[flips] = np.minimum((cum < u).sum(1), num_classes - 1)
    return _finish("noisy", true, y, None)


@WEAK_LABELS.register("partial", kind="partial")
def partial(
    labels: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    *,
    q: float = 0.3,
    eta: float = 0.0,
    min_one_false: bool = False,
) -> WeakLabels:
    """Candidate sets: each wrong class joins a sample's set independently with probability ``q``.

    Parameters
    ----------
    q
        Flip probability of each wrong class into the set.
    eta
        Unreliable rate: with probability ``eta`` the true label is replaced in the set by a random
        non-candidate (IRNet's swap), or simply dropped when every class is a candidate.
    min_one_false
        Redraw a set until it holds at least one false label (so no sample is fully labeled).
    """
    true = np.asarray(labels, dtype=np.int64)
    q = _rate("weak_labels.q", q)
    eta = _rate("weak_labels.eta", eta)
    n = len(true)
    rows = np.arange(n)
    cand = rng.random((n, num_classes)) < q
    cand[rows, true] = False
    if min_one_false and q > 0 and num_classes > 1:
        empty = ~cand.any(1)
        while empty.any():
            redraw = rng.random((int(empty.sum()), num_classes)) < q
            redraw[np.arange(len(redraw)), true[empty]] = False
            cand[empty] = redraw
            empty = ~cand.any(1)
    cand[rows, true] = True
    if eta > 0:
        for i in np.flatnonzero(rng.random(n) < eta):
            cand[i, true[i]] = False
            outside = np.flatnonzero(~cand[i])
            outside = outside[outside != true[i]]
            if len(outside):
                cand[i, rng.choice(outside)] = True
            elif not cand[i].any():  # one class only: keep the set non-empty
                cand[i, true[i]] = True
    y = np.full(n, -1, dtype=np.int64)
    return _finish("partial", true, y, cand)


@WEAK_LABELS.register("semi", kind="semi")
def semi(
    labels: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    *,
    labeled_ratio: float | None = None,
    labels_per_class: int | None = None,
) -> WeakLabels:
    """A labeled subset with true labels; the rest is unlabeled (``y = -1``).

    Parameters
    ----------
    labeled_ratio
        Fraction of the client's samples that keep their label (``round``, at least 1 when > 0).
    labels_per_class
        Instead: this many labels per class (all of a class when it has fewer). Exactly one of the
        two must be set (``conf/weak_labels/semi.yaml`` sets ``labeled_ratio: 0.05``; override
        ``weak_labels.labeled_ratio=null`` to use ``labels_per_class``).
    """
    true = np.asarray(labels, dtype=np.int64)
    n = len(true)
    if (labeled_ratio is None) == (labels_per_class is None):
        raise ConfigError(
            f"weak_labels semi needs exactly one of labeled_ratio, labels_per_class: got "
            f"labeled_ratio={labeled_ratio!r}, labels_per_class={labels_per_class!r}"
        )
    keep = np.zeros(n, dtype=bool)
    if labels_per_class is not None:
        if isinstance(labels_per_class, bool) or not isinstance(labels_per_class, int):
            raise invalid("weak_labels.labels_per_class", labels_per_class, "an integer >= 0")
        if labels_per_class < 0:
            raise invalid("weak_labels.labels_per_class", labels_per_class, "an integer >= 0")
        for c in range(num_classes):
            idx = np.flatnonzero(true == c)
            keep[rng.permutation(idx)[:labels_per_class]] = True
    else:
        ratio = _rate("weak_labels.labeled_ratio", labeled_ratio)
        k = int(round(ratio * n))
        if ratio > 0 and n > 0:
            k = max(k, 1)
        keep[rng.permutation(n)[:k]] = True
    y = np.where(keep, true, -1).astype(np.int64)
    return _finish("semi", true, y, None)


def generator_params(name: str) -> list[str]:
    """The keyword parameters of generator ``name`` (for one-line errors on typos)."""
    import inspect

    fn = WEAK_LABELS.get(name)
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name != "x"
    ]


def make_weak_labels(
    name: str,
    labels: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    params: Mapping[str, Any],
    x: np.ndarray | None = None,
) -> WeakLabels:
    """Run generator ``name`` with ``params`` (checked against its signature)."""
    fn = WEAK_LABELS.get(name)
    allowed = generator_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"invalid weak_labels parameter {unknown[0]!r} for {name!r}: allowed "
            f"{', '.join(allowed) or 'none'}"
        )
    kwargs = dict(params)
    if name == "noisy" and kwargs.get("noise_type") == "instance":
        kwargs["x"] = x
    return fn(labels, num_classes, rng, **kwargs)
