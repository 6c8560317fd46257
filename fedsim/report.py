"""``fedsim report``: compare finished runs in one table: means with 95 % intervals over seeds,
the test accuracy at the best-validation round, and (``--baseline``) the paired difference to a
baseline group over the seeds both have.

Runs are grouped by their configuration, ignoring the seed, the output directory, ``resume`` and
Hydra's own keys; runs that differ only in seed fall in one group.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.constants import (
    CONFIG_FILE,
    FINAL_ACCURACY,
    ROUNDS_DONE,
    SUMMARY_FILE,
    TEST_AT_BEST_VAL,
    TOTAL_FAILURES,
    TOTAL_SECONDS,
)
from fedsim.errors import ConfigError

IGNORED_KEYS = frozenset({"seed", "output_dir", "resume"})
MAX_SEARCH_DEPTH = 3
HEADERS = (
    "group",
    "n",
    "final acc [95% CI]",
    "test acc @ best val",
    "rounds",
    "wall s",
    "failures",
)


@dataclass
class RunInfo:
    """A finished run: its directory, resolved config and summary."""

    path: Path
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def _not_a_run(path: Path) -> ConfigError:
    return ConfigError(
        f"not a fedsim run directory: '{path}' "
        f"(no {SUMMARY_FILE}; runs still in progress or failed have none)"
    )


def load_run(run_dir: Path) -> RunInfo:
    """Load one run directory.

    Parameters
    ----------
    run_dir
        A directory holding :data:`SUMMARY_FILE` (and normally :data:`CONFIG_FILE`).

    Returns
    -------
    RunInfo
        The run; ``config`` is empty when the run has no config file.

    Raises
    ------
    ConfigError
        If ``run_dir`` has no summary or it cannot be read.
    """
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise _not_a_run(run_dir)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"unreadable {SUMMARY_FILE} in '{run_dir}': {exc}") from None
    config: dict = {}
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
        if isinstance(loaded, dict):
            config = loaded
    return RunInfo(path=run_dir, config=config, summary=summary)


def find_runs(path: Path, max_depth: int = MAX_SEARCH_DEPTH) -> list[Path]:
    """Expand ``path`` to run directories.

    Parameters
    ----------
    path
        A run directory, or a parent (e.g. a Hydra multirun folder) with runs below it.
    max_depth
        How many folder levels below ``path`` to search.

    Returns
    -------
    list of Path
        ``[path]`` if it is a run, else the runs found below it, sorted.

    Raises
    ------
    ConfigError
        If ``path`` is not a run and has none below it.
    """
    path = Path(path)
    if (path / SUMMARY_FILE).is_file():
        return [path]
    found: list[Path] = []
    level = [path] if path.is_dir() else []
    for _ in range(max_depth):
        next_level: list[Path] = []
        for folder in level:
            for child in sorted(p for p in folder.iterdir() if p.is_dir()):
                if (child / SUMMARY_FILE).is_file():
                    found.append(child)
                elif not child.name.startswith("."):
                    next_level.append(child)
        level = next_level
    if not found:
        raise _not_a_run(path)
    return sorted(found)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys (lists are kept as values)."""
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _relevant(config: Mapping[str, Any]) -> dict[str, str]:
    """Flattened config without ignored keys, values as canonical JSON strings."""
    return {
        key: json.dumps(value, sort_keys=True, default=str)
        for key, value in _flatten(config).items()
        if key not in IGNORED_KEYS and not key.startswith("hydra")
    }


def _label_item(key: str, value: str) -> str:
    """``key=value`` with a group's ``.name`` shortened (``strategy.name`` -> ``strategy``)."""
    if key.endswith(".name"):
        key = key[: -len(".name")]
    shown = json.loads(value)
    return f"{key}={shown if isinstance(shown, str) else value}"


def group_runs(runs: Sequence[RunInfo]) -> dict[str, list[RunInfo]]:
    """Group runs whose configs are equal up to the seed (and other ignored keys).

    Parameters
    ----------
    runs
        The runs to group.

    Returns
    -------
    dict
        Label -> runs, in order of first appearance. A label lists the ``key=value`` pairs that
        differ between runs (keys a run lacks are left out of its label); a single group is
        labelled ``"all"``.
    """
    flats = [_relevant(run.config) for run in runs]
    all_keys = sorted({key for flat in flats for key in flat})
    varying = [k for k in all_keys if len({flat.get(k) for flat in flats}) > 1]
    groups: dict[tuple, list[RunInfo]] = {}
    for run, flat in zip(runs, flats, strict=True):
        groups.setdefault(tuple(flat.get(k) for k in varying), []).append(run)
    if len(groups) <= 1:
        return {"all": list(runs)} if runs else {}
    labelled: dict[str, list[RunInfo]] = {}
    for signature, members in groups.items():
        # `.name` keys first, so that e.g. "strategy=fedprox" leads its label
        items = [(k, v) for k, v in zip(varying, signature, strict=True) if v is not None]
        items.sort(key=lambda kv: (not kv[0].endswith(".name"), kv[0]))
        label = " ".join(_label_item(k, v) for k, v in items) or "(defaults)"
        while label in labelled:  # distinct configs whose shown items coincide
            label += "'"
        labelled[label] = members
    return labelled


def _numbers(runs: Sequence[RunInfo], key: str) -> list[float]:
    """The finite numeric values of summary ``key`` across ``runs``."""
    values = []
    for run in runs:
        value = run.summary.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values.append(float(value))
    return values


def mean_std(values: list[float], *, digits: int = 2, scale: float = 1.0, empty: str = "-") -> str:
    """``mean ± std`` of the finite ``values`` times ``scale`` (sample std; 0 for one value).

    Parameters
    ----------
    values
        The numbers (None and non-finite ones are left out).
    digits
        Decimals shown.
    scale
        A factor applied to both, e.g. 100 for percent.
    empty
        What to show when no finite value is left.
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return empty
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{scale * statistics.fmean(vals):.{digits}f} ± {scale * std:.{digits}f}"


def _mean(values: list[float], digits: int) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else "-"


def _rounds(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = int(min(values)), int(max(values))
    return str(low) if low == high else f"{low}-{high}"


def _by_seed(runs: Sequence[RunInfo], key: str) -> dict[int, float]:
    """Seed -> the finite summary ``key`` of each run (the seed from the summary or config)."""
    out: dict[int, float] = {}
    for run in runs:
        value = run.summary.get(key)
        seed = run.summary.get("seed", run.config.get("seed"))
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if math.isfinite(value) and isinstance(seed, int):
            out[seed] = float(value)
    return out


def _rows(
    run_dirs: Sequence[Path], baseline: str | None = None
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and one row per group (with a paired-difference column for ``baseline``)."""
    from fedsim.stats import format_ci, format_paired, mean_ci, paired_difference

    paths = [run for path in run_dirs for run in find_runs(Path(path))]
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    runs = [load_run(p) for p in unique]
    groups = group_runs(runs)
    header: tuple[str, ...] = HEADERS
    base = None
    if baseline is not None:
        matches = [label for label in groups if baseline == label or baseline in label.split()]
        if len(matches) != 1:
            raise ConfigError(
                f"invalid --baseline {baseline!r}: allowed one group label or one of its "
                f"key=value items ({'; '.join(groups)})"
            )
        base = _by_seed(groups[matches[0]], FINAL_ACCURACY)
        header = (*HEADERS[:4], f"Δ final vs {matches[0]} (wins/n)", *HEADERS[4:])
    rows: list[tuple[str, ...]] = []
    for label, members in groups.items():
        failures = _numbers(members, TOTAL_FAILURES)
        row = [
            label,
            str(len(members)),
            format_ci(mean_ci(_numbers(members, FINAL_ACCURACY)), digits=4),
            _mean(_numbers(members, TEST_AT_BEST_VAL), 4),
        ]
        if base is not None:
            paired = paired_difference(_by_seed(members, FINAL_ACCURACY), base)
            row.append(
                format_paired(paired, digits=4) if members is not groups[matches[0]] else "baseline"
            )
        row += [
            _rounds(_numbers(members, ROUNDS_DONE)),
            _mean(_numbers(members, TOTAL_SECONDS), 1),
            str(int(sum(failures))) if failures else "-",
        ]
        rows.append(tuple(row))
    return header, rows


def _render_text(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _render_markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    align = "| --- |" + " ---: |" * (len(header) - 1)
    return "\n".join([line(header), align, *(line(row) for row in rows)])


def report_table(
    run_dirs: Sequence[Path], *, markdown: bool = False, baseline: str | None = None
) -> str:
    """Build the comparison table of the given runs.

    Parameters
    ----------
    run_dirs
        Run directories, or parents of run directories (searched up to 3 levels deep).
    markdown
        Render a Markdown table instead of aligned plain text.
    baseline
        A group's label (or one of its ``key=value`` items): adds the paired difference of each
        group's final accuracy to it, over the seeds both have, with its 95 % interval and wins.

    Returns
    -------
    str
        One row per group: label, number of runs, final accuracy mean with its 95 % interval,
        the mean test accuracy at the best-validation round (never the best test accuracy: that
        would choose on the test split), rounds, wall seconds mean and total failures.

    Raises
    ------
    ConfigError
        If a path is not a run directory and holds none.
    """
    header, rows = _rows(run_dirs, baseline)
    return _render_markdown(header, rows) if markdown else _render_text(header, rows)


def main_report(argv: list[str]) -> int:
    """Entry point of ``fedsim report RUN_DIR [RUN_DIR ...] [--markdown]``.

    Parameters
    ----------
    argv
        Arguments after ``report``.

    Returns
    -------
    int
        0 on success. :class:`ConfigError` propagates to the CLI.
    """
    parser = argparse.ArgumentParser(
        prog="fedsim report",
        description="Compare finished runs: one row per config, means with 95% intervals over "
        "seeds, paired differences to --baseline.",
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories, or folders holding them (e.g. a multirun folder)",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--baseline",
        metavar="LABEL",
        help="a group label or one key=value of it, e.g. strategy=fedavg: paired differences",
    )
    args = parser.parse_args(argv)
    print(report_table(args.run_dirs, markdown=args.markdown, baseline=args.baseline))
    return 0
