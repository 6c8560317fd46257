"""A study's declaration (``conf/study/<name>.yaml``): cells times seeds, and what to report.

A study is a list of *blocks*; a block is the product of its *axes*; an axis maps a label to the
overrides it adds (``method: {ce: [local=supervised], gce: [local=gce]}``). Every cell is one
label per axis. ``base`` overrides apply to every cell; each cell runs once per seed. Post-hoc
variants (``posthoc``: e.g. post-training defenses) reuse each trained model of a cell instead of
training again. ``select`` rows choose one label of an axis by a *validation* metric (the study
refuses a test metric) and report that label's test numbers.

Loading checks everything before any run starts: each bad key gets one line.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError, invalid
from fedsim.schema import spec

STUDY_DIR = Path(__file__).resolve().parents[2] / "conf" / "study"
#: Metrics a selection may use: the validation split's, never the test split's.
SELECTABLE_PREFIXES = ("val_", "best_val_", "final_val_")
_TERM = re.compile(r"\s*([+-]?)\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
MODES = ("max", "min")
KEYS = (
    "name",
    "description",
    "scale",
    "base",
    "seeds",
    "axes",
    "blocks",
    "posthoc",
    "baseline",
    "select",
    "tables",
    "plots",
    "doc",
    "output",
    "archive",
    "reports",
)


@dataclass(frozen=True)
class Cell:
    """One cell of a study: a label per axis and the overrides they add (``base`` included)."""

    labels: tuple[tuple[str, str], ...]
    overrides: tuple[str, ...]

    def label(self, axis: str) -> str:
        return dict(self.labels)[axis]

    @property
    def name(self) -> str:
        return " ".join(f"{a}={v}" for a, v in self.labels)


@dataclass(frozen=True)
class Selection:
    """Choose, per group of the other axes, the label of ``axis`` among ``among`` with the best
    mean (over seeds) of the validation metric ``metric``; shown as the label ``name``."""

    name: str
    axis: str
    among: tuple[str, ...]
    metric: str
    mode: str


@dataclass(frozen=True)
class Table:
    """A Markdown table: ``metric`` (a run's summary key) per ``rows`` label and ``cols`` label,
    mean with its 95 % interval, plus paired differences to the baseline of ``rows``."""

    metric: str
    rows: str
    title: str = ""  # default: the metric
    cols: str | None = None
    scale: float = 1.0
    digits: int = 1
    higher_is_better: bool = True


@dataclass(frozen=True)
class Plot:
    """A figure: the mean over seeds of the metric ``metric`` against ``x``, one line per
    ``hue`` label, one panel per ``facet`` label, drawn from the runs' round records
    (``records: rounds``) or their per-stage records (``records: stages``: a FAL cycle's query
    metrics such as ``query_precision``, with ``x: stage``)."""

    metric: str
    hue: str
    facet: str | None = None
    x: str = "round"
    title: str = ""
    records: Annotated[str, spec(choices=("rounds", "stages"))] = "rounds"


@dataclass(frozen=True)
class StudySpec:
    """A loaded, checked study (see the module docstring)."""

    name: str
    description: str
    scale: str
    base: tuple[str, ...]
    seeds: tuple[int, ...]
    axes: tuple[str, ...]
    cells: tuple[Cell, ...]
    posthoc: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    posthoc_axis: str = "method"
    baseline: Mapping[str, str] = field(default_factory=dict)
    select: tuple[Selection, ...] = ()
    tables: tuple[Table, ...] = ()
    plots: tuple[Plot, ...] = ()
    doc: str | None = None
    output: str = "outputs/studies"
    archive: str | None = None
    reports: tuple[str, ...] = ()


def _archive(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise invalid("archive", value, "a folder for the complete runs' records, or null")
    return value


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise invalid(where, value, "a list of override strings")
    if not all(isinstance(v, str) for v in value):
        raise invalid(where, list(value), "a list of override strings")
    return tuple(value)


def _axes(where: str, node: Any) -> dict[str, dict[str, tuple[str, ...]]]:
    if not isinstance(node, Mapping) or not node:
        raise invalid(where, node, "a mapping axis -> {label: [overrides]}")
    axes: dict[str, dict[str, tuple[str, ...]]] = {}
    for axis, labels in node.items():
        if not isinstance(labels, Mapping) or not labels:
            raise invalid(f"{where}.{axis}", labels, "a mapping label -> [overrides]")
        axes[str(axis)] = {str(k): _strings(f"{where}.{axis}.{k}", v) for k, v in labels.items()}
    return axes


def _cells(node: Mapping[str, Any], base: tuple[str, ...]) -> tuple[tuple[str, ...], list[Cell]]:
    if ("axes" in node) == ("blocks" in node):
        raise ConfigError("a study needs exactly one of 'axes' (one block) or 'blocks'")
    blocks = [node["axes"]] if "axes" in node else list(node["blocks"] or [])
    names: tuple[str, ...] | None = None
    cells: list[Cell] = []
    for i, block in enumerate(blocks):
        where = "axes" if "axes" in node else f"blocks[{i}]"
        axes = _axes(where, block)
        if names is None:
            names = tuple(axes)
        elif set(axes) != set(names):
            raise invalid(f"{where}", sorted(axes), f"the axes of blocks[0]: {sorted(names)}")
        for combo in itertools.product(*(axes[a].items() for a in names)):
            labels = tuple((a, lab) for a, (lab, _) in zip(names, combo, strict=True))
            overrides = base + tuple(o for _, ovs in combo for o in ovs)
            cell = Cell(labels=labels, overrides=overrides)
            if any(c.labels == labels for c in cells):
                raise ConfigError(f"study cell {cell.name} is declared twice")
            cells.append(cell)
    assert names is not None
    return names, cells


def metric_terms(expr: str) -> list[tuple[float, str]]:
    """``[(sign, key), ...]`` of a metric expression: a key, or keys joined by ``+``/``-``
    (``final_val_accuracy - final_val_asr``).

    Raises
    ------
    ConfigError
        If ``expr`` is not of that form.
    """
    terms, pos = [], 0
    for m in _TERM.finditer(expr):
        if m.start() != pos or (pos and not m.group(1)):
            break
        terms.append((-1.0 if m.group(1) == "-" else 1.0, m.group(2)))
        pos = m.end()
    if pos != len(expr) or not terms:
        raise invalid("metric", expr, "a key, or keys joined by + and -")
    return terms


def _selectable(where: str, metric: str) -> str:
    """Refuse a selection metric with a term that is not a validation metric."""
    for _, key in metric_terms(metric):
        if not key.startswith(SELECTABLE_PREFIXES):
            raise invalid(
                where,
                metric,
                "validation metrics only (val_*, best_val_*, final_val_*): a study never "
                "chooses on the test split",
            )
    return metric


def _select(node: Any, axes: tuple[str, ...], cells: list[Cell], posthoc: Mapping) -> tuple:
    out = []
    for i, s in enumerate(node or []):
        where = f"select[{i}]"
        if not isinstance(s, Mapping):
            raise invalid(where, s, "a mapping with name, axis, among, metric, mode")
        unknown = set(s) - {"name", "axis", "among", "metric", "mode"}
        if unknown:
            raise invalid(f"{where}.{sorted(unknown)[0]}", "", "name, axis, among, metric, mode")
        axis = str(s.get("axis", ""))
        if axis not in axes:
            raise invalid(f"{where}.axis", axis, ", ".join(axes))
        labels = {c.label(axis) for c in cells} | (set(posthoc) if axis == "method" else set())
        among = tuple(str(a) for a in s.get("among") or [])
        bad = [a for a in among if a not in labels]
        if len(among) < 2 or bad:
            raise invalid(f"{where}.among", list(among), f"two or more of {sorted(labels)}")
        mode = str(s.get("mode", "max"))
        if mode not in MODES:
            raise invalid(f"{where}.mode", mode, " or ".join(MODES))
        metric = _selectable(f"{where}.metric", str(s.get("metric", "")))
        out.append(Selection(str(s.get("name") or f"{axis}*"), axis, among, metric, mode))
    return tuple(out)


def _entries(
    node: Any, axes: tuple[str, ...], cls: type, group: str, axis_keys: tuple[str, ...]
) -> tuple[Any, ...]:
    """The ``tables`` or ``plots`` of a study: each a mapping checked against ``cls``'s fields
    (:func:`fedsim.schema.check_params`: unknown keys, types, required ones), whose
    ``axis_keys`` name axes of the study."""
    from fedsim.schema import check_params, keys_of

    required = [k.name for k in keys_of(cls) if k.required]
    out = []
    for i, item in enumerate(node or []):
        where = f"{group}[{i}]"
        if not isinstance(item, Mapping) or any(k not in item for k in required):
            raise invalid(where, item, f"a mapping with at least {' and '.join(required)}")
        check_params(where, cls, item)
        for key in axis_keys:
            if item.get(key) is not None and item[key] not in axes:
                raise invalid(f"{where}.{key}", item[key], ", ".join(axes))
        out.append(cls(**{str(k): v for k, v in item.items()}))
    return tuple(out)


def study_path(name: str) -> Path:
    """``conf/study/<name>.yaml``, or ``name`` itself when it is a path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    path = STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown study {name!r}: valid study names are {', '.join(known)}")
    return path


def load_study(name: str, overrides: Sequence[str] = ()) -> StudySpec:
    """The study ``name`` (``conf/study/<name>.yaml`` or a YAML path), with dotted
    ``overrides`` of its own keys (``seeds=[0,1]``, ``output=/tmp/s``), checked.

    Raises
    ------
    ConfigError
        One line naming the bad key and what is allowed.
    """
    raw = OmegaConf.load(study_path(name))
    if overrides:
        raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
    assert isinstance(raw, DictConfig)
    node = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(node, dict)
    return parse_study({str(k): v for k, v in node.items()}, default_name=Path(name).stem)


def parse_study(node: Mapping[str, Any], *, default_name: str = "study") -> StudySpec:
    """Check a study mapping (see :func:`load_study`) and build its :class:`StudySpec`."""
    unknown = sorted(set(node) - set(KEYS))
    if unknown:
        raise invalid(f"study key {unknown[0]!r}", "", ", ".join(KEYS))
    base = _strings("base", node.get("base"))
    seeds = node.get("seeds", [0])
    if (
        not isinstance(seeds, Sequence)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise invalid("seeds", seeds, "a non-empty list of integers >= 0")
    axes, cells = _cells(node, base)
    posthoc = dict(node.get("posthoc") or {})
    for label, defense in posthoc.items():
        if not isinstance(defense, Mapping) or "name" not in defense:
            raise invalid(f"posthoc.{label}", defense, "a defense mapping with a name")
    baseline = {str(k): str(v) for k, v in (node.get("baseline") or {}).items()}
    for axis, label in baseline.items():
        labels = {c.label(axis) for c in cells} if axis in axes else set()
        if axis == "method":
            labels |= set(posthoc)
        if label not in labels:
            raise invalid(f"baseline.{axis}", label, ", ".join(sorted(labels)) or "an axis label")
    if posthoc and "method" not in axes:
        raise ConfigError("a study with posthoc variants needs a 'method' axis")
    trained = sorted({c.label("method") for c in cells}) if posthoc else []
    if len(trained) > 1:  # a post-hoc row is named by its variant alone
        raise invalid(
            "method",
            trained,
            "one trained label when posthoc variants are declared (each variant is applied to "
            "that method's models; put other trained methods in another study)",
        )
    return StudySpec(
        name=str(node.get("name") or default_name),
        description=str(node.get("description") or ""),
        scale=str(node.get("scale") or ""),
        base=base,
        seeds=tuple(int(s) for s in seeds),
        axes=axes,
        cells=tuple(cells),
        posthoc=posthoc,
        baseline=baseline,
        select=_select(node.get("select"), axes, cells, posthoc),
        tables=_entries(node.get("tables"), axes, Table, "tables", ("rows", "cols")),
        plots=_entries(node.get("plots"), axes, Plot, "plots", ("hue", "facet")),
        doc=node.get("doc"),
        output=str(node.get("output") or "outputs/studies"),
        archive=_archive(node.get("archive")),
        reports=_strings("reports", node.get("reports")),
    )
