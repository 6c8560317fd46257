#!/usr/bin/env python
"""Federated active learning on Fashion-MNIST-LT: every query strategy at beta in {0.1, 100}.

Runs ``fedsim.runner.run(cfg)`` for each (seed, beta, strategy) on the reference presets
(``experiment=fal_fmnist_lt`` / ``fal_fmnist_lt_b100``: rho = 20, ``dir_balance`` partition,
10 clients, cnn4conv, FedAvg, fresh initialisation per stage) and writes to ``--out``:

- ``fal.md``: final test accuracy and AULC (mean +- std over seeds), the share of queried samples
  that fall in the rarer half of the classes, the seeds run;
- ``fal_accuracy.png``: test accuracy per labeled ratio (mean over seeds), one panel per beta;
- ``fal_tail_share.png``: tail-class share of the queries per strategy and beta.

Reductions for a 2-core CPU (the reference runs 100 rounds x 5 local epochs per stage, 9 stages, on
the full 20,428-sample FMNIST-LT, 64-channel cnn4conv, 5 seeds); the defaults below are what
``docs/results/fal.md`` was produced with:

- ``--max-train-samples 12000``: a seeded 12,000-image subset of the 60,000 training images is
  made long-tailed (rho = 20), giving N = 4,086 (N100 = 4,100: 20 initial labels per client and
  20 per cycle; the test split stays the full balanced 10,000 images);
- ``--rounds 10`` FL rounds per stage, ``--local-epochs 1``, batch 32, local lr 0.05 (reference
  0.01 with batch 64 and 5 epochs: too few SGD steps in 10 rounds);
- ``--test-subset 3000``: accuracy on a seeded 3,000-image subset of the balanced test split;
- ``--end-ratio 0.25``: 5 stages (5%..25% labeled), 4 query cycles;
- ``--width 16`` channels in cnn4conv (reference 64);
- ``--local-only-epochs 20``: cap of the local-only model's epochs (reference 50);
- seeds 0, 1, 2 (reference 5); every run directory is kept under ``--runs`` and a finished run
  is not run again, so the script can be stopped and restarted.

Usage::

    nice -n 15 python scripts/fal_table.py                      # everything (resumable)
    nice -n 15 python scripts/fal_table.py --reverse            # a second worker alongside
    python scripts/fal_table.py --seeds 0 --strategies fairfal --betas 0.1   # calibrate
    python scripts/fal_table.py --report-only                   # table from finished runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.report import mean_std

STRATEGIES = [
    "random",
    "entropy",
    "margin",
    "least_confidence",
    "coreset",
    "badge",
    "logo",
    "kafal",
    "fairfal",
]
PRESETS = {0.1: "fal_fmnist_lt", 100.0: "fal_fmnist_lt_b100"}
REPO = Path(__file__).resolve().parents[1]


def overrides(args: argparse.Namespace, beta: float, strategy: str, seed: int) -> list[str]:
    """The config overrides of one run."""
    return [
        f"experiment={PRESETS[beta]}",
        f"query={strategy}",
        f"seed={seed}",
        f"dataset.root={args.data}",
        f"max_train_samples={args.max_train_samples}",
        f"rounds={args.rounds}",
        f"eval_every={args.rounds}",
        f"local.epochs={args.local_epochs}",
        f"fal.end_ratio={args.end_ratio}",
        f"fal.local_only.max_epochs={args.local_only_epochs}",
        f"+model.params.width={args.width}",
        f"local.batch_size={args.batch_size}",
        f"local.lr={args.lr}",
        f"fal.test_subset={args.test_subset}",
        "progress=false",
        "engine.num_cpus=2",
    ]


def run_dir(args: argparse.Namespace, beta: float, strategy: str, seed: int) -> Path:
    return Path(args.runs) / f"beta{beta:g}" / strategy / f"seed{seed}"


def run_one(args: argparse.Namespace, beta: float, strategy: str, seed: int) -> dict[str, Any]:
    import os

    from fedsim.config import compose
    from fedsim.runner import run

    out = run_dir(args, beta, strategy, seed)
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    try:  # another invocation (e.g. one with --reverse) may be running this cell
        os.close(os.open(out / ".lock", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return {}
    cfg = compose(overrides(args, beta, strategy, seed))
    cfg.output_dir = str(out)
    t = time.monotonic()
    summary = run(cfg)
    print(
        f"beta={beta:g} {strategy:>16} seed={seed}: final {summary['final_accuracy']:.4f} "
        f"AULC {summary['aulc']:.4f} tail {summary.get('query_tail_share') or float('nan'):.3f} "
        f"({time.monotonic() - t:.0f}s)",
        flush=True,
    )
    return summary


def collect(args: argparse.Namespace) -> dict[tuple[float, str], list[dict[str, Any]]]:
    res: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for beta in args.betas:
        for s in args.strategies:
            rows = []
            for seed in args.seeds:
                f = run_dir(args, beta, s, seed) / "summary.json"
                if f.is_file():
                    rows.append(json.loads(f.read_text()))
            res[(beta, s)] = rows
    return res


def paired_lines(
    args: argparse.Namespace, res: dict[tuple[float, str], list[dict[str, Any]]]
) -> list[str]:
    """FairFAL minus each baseline, paired by seed: final accuracy, AULC and tail share."""
    if "fairfal" not in args.strategies:
        return []
    lines = [
        "## FairFAL minus each baseline, paired by seed",
        "",
        "Differences in percentage points (mean over the seeds both finished); `wins` counts",
        "the seeds where FairFAL is higher.",
        "",
    ]
    for beta in args.betas:
        ff = {r["seed"]: r for r in res[(beta, "fairfal")]}
        lines += [
            f"### beta = {beta:g}",
            "",
            "| baseline | seeds | final acc diff (wins) | AULC diff (wins) | tail share diff (wins) |",
            "|---|---|---|---|---|",
        ]
        for s in args.strategies:
            if s == "fairfal":
                continue
            pairs = [(ff[r["seed"]], r) for r in res[(beta, s)] if r["seed"] in ff]
            if not pairs:
                lines.append(f"| {s} | - | not run | not run | not run |")
                continue
            cells = []
            for key in ("final_accuracy", "aulc", "query_tail_share"):
                d = [a[key] - b[key] for a, b in pairs]
                cells.append(f"{np.mean(d) * 100:+.2f} ({sum(x > 0 for x in d)}/{len(d)})")
            lines.append(f"| {s} | {len(pairs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def report(args: argparse.Namespace, elapsed: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = collect(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Federated active learning on Fashion-MNIST-LT (rho = 20)",
        "",
        "Produced by `scripts/fal_table.py` (see its docstring for the reductions). Setting: 10",
        "clients, balanced Dirichlet partition (`dir_balance`, partition seed 0), cnn4conv, FedAvg",
        "with full participation, fresh initialisation per stage, 5% initial labeled pool and +5%",
        "per cycle. Reduced for a shared 2-core CPU:",
        "",
        f"- a seeded {args.max_train_samples}-image training subset made long-tailed (N = 4,082 to",
        "  4,086 depending on the seed; 20 labels per client initially and per cycle);",
        f"- {args.rounds} rounds x {args.local_epochs} local epoch(s) per stage, batch"
        f" {args.batch_size}, local lr {args.lr};",
        f"- stages up to {args.end_ratio:.0%} labeled ({int(round((args.end_ratio - 0.05) / 0.05))}"
        " query cycles);",
        f"- cnn4conv width {args.width} (reference 64), local-only model capped at"
        f" {args.local_only_epochs} epochs;",
        f"- test accuracy on a seeded {args.test_subset}-image subset of the balanced test split,"
        " after each stage's last round.",
        "",
        "AULC: trapezoid area under accuracy(labeled ratio) divided by the span. Tail share: the",
        "fraction of queried samples whose true class is in the rarer half (classes 5-9), averaged",
        "over cycles; the pool itself has about 16% of its samples there, which is what `random`",
        "should get. Values: mean ± std (%) over the seeds listed (std with ddof = 1; 0.00 for a",
        "single seed); `not run` marks cells with no finished run.",
        "",
    ]
    for beta in args.betas:
        lines += [
            f"## beta = {beta:g}",
            "",
            "| strategy | final accuracy (%) | AULC (%) | query tail share (%) | seeds |",
            "|---|---|---|---|---|",
        ]
        for s in args.strategies:
            rows = res[(beta, s)]
            fin = [r["final_accuracy"] for r in rows]
            au = [r["aulc"] for r in rows]
            tail = [r["query_tail_share"] for r in rows if r.get("query_tail_share") is not None]
            seeds = ",".join(str(r["seed"]) for r in rows) or "-"
            lines.append(f"| {s} | {pct(fin)} | {pct(au)} | {pct(tail)} | {seeds} |")
        lines.append("")
    lines += paired_lines(args, res)
    if elapsed is not None:
        lines += [f"Wall time of this invocation: {elapsed / 60:.1f} min.", ""]
    (out / "fal.md").write_text("\n".join(lines) + args.notes)

    fig, axes = plt.subplots(1, len(args.betas), figsize=(6 * len(args.betas), 4.5), squeeze=False)
    for ax, beta in zip(axes[0], args.betas, strict=True):
        for s in args.strategies:
            rows = res[(beta, s)]
            if not rows:
                continue
            acc = np.mean([r["stage_accuracies"] for r in rows], axis=0)
            style = "o-" if s == "fairfal" else ".--"
            ax.plot(
                rows[0]["labeled_ratios"], acc * 100, style, label=s, lw=2 if s == "fairfal" else 1
            )
        ax.set_title(f"FMNIST-LT, beta = {beta:g}")
        ax.set_xlabel("labeled ratio")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fal_accuracy.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(args.betas)
    x = np.arange(len(args.strategies))
    for i, beta in enumerate(args.betas):
        vals = []
        for s in args.strategies:
            t = [
                r["query_tail_share"]
                for r in res[(beta, s)]
                if r.get("query_tail_share") is not None
            ]
            vals.append(np.mean(t) * 100 if t else np.nan)
        ax.bar(x + i * width, vals, width, label=f"beta = {beta:g}")
    ax.set_xticks(x + width * (len(args.betas) - 1) / 2, args.strategies, rotation=30)
    ax.set_ylabel("queries in the tail half of the classes (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fal_tail_share.png", dpi=100)
    plt.close(fig)
    print(f"wrote {out / 'fal.md'}")


def pct(values: list[float]) -> str:
    """``mean ± std`` in percent over seeds (:func:`fedsim.report.mean_std`)."""
    return mean_std(values, scale=100, empty="not run")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--betas", type=float, nargs="+", default=[0.1, 100.0])
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--max-train-samples", type=int, default=12000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--test-subset", type=int, default=3000)
    p.add_argument("--end-ratio", type=float, default=0.25)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--local-only-epochs", type=int, default=20)
    p.add_argument("--runs", default=str(REPO / "outputs" / "fal_table"))
    p.add_argument("--out", default=str(REPO / "docs" / "results"))
    p.add_argument("--notes", default="", help="text appended to fal.md (a file path or text)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--reverse",
        action="store_true",
        help="run each seed's cells in reverse order (a second invocation working alongside)",
    )
    args = p.parse_args()
    if args.notes and Path(args.notes).is_file():
        args.notes = Path(args.notes).read_text()
    t0 = time.monotonic()
    if not args.report_only:
        from fedsim.config import compose
        from fedsim.engine.fast import _ray_init

        cfg = compose(overrides(args, args.betas[0], args.strategies[0], args.seeds[0]))
        for _attempt in range(3):  # one Ray for all runs (its start can time out on a busy host)
            try:
                _ray_init(cfg)
                break
            except Exception as e:  # noqa: BLE001
                print(f"ray.init failed ({e}); retrying", flush=True)
                time.sleep(10)
        for seed in args.seeds:  # complete seeds first, so a cut-short table is still balanced
            cells = [(beta, s) for beta in args.betas for s in args.strategies]
            for beta, s in reversed(cells) if args.reverse else cells:
                run_one(args, beta, s, seed)
    report(args, None if args.report_only else time.monotonic() - t0)


if __name__ == "__main__":
    main()
