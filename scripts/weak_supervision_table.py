"""Weak supervision on every client: CE against the matching local methods, per weak-label setting.

Fashion-MNIST from ``../shared/data``, 10 clients, Dirichlet(0.5) label skew, all clients sampled
every round, FedAvg. Settings (every client gets the same kind of weak labels, each with its own
seeded draw):

- ``clean``: true labels, CE (the reference);
- ``sym40``: 40% symmetric noise (exclude-true convention), CE vs GCE, SCE, Co-teaching
  (forget rate = the noise rate, as in the paper), DPC's loss and BLDR's core;
- ``partial_q0.3``: candidate sets with q = 0.3 (eta = 0), PRODEN, CC, RC (CE refuses partial
  labels; compare with the clean CE row);
- ``semi5``: 5% of each client's samples labeled, supervised CE on those vs FixMatch, FlexMatch.

Every run goes through :func:`fedsim.runner.run` with a composed config; run directories (with
``label_quality.csv``) are kept under ``--runs-dir`` and a finished run is not repeated, so the
script can be stopped and resumed. Results: a Markdown table (mean +- std of the final test
accuracy over seeds) and a PNG of the mean test accuracy per round.

Budget (a 2-core machine shared with other jobs; the defaults were chosen so that the whole table
takes about 40 minutes there): a seeded subset of ``--max-train-samples`` 6000 training images
(about 600 per client) instead of 60000; the ``mlp`` model (784-200-200-10) instead of a CNN;
``--rounds`` 20 rounds of ``--epochs`` 2 local epochs; FixMatch/FlexMatch with mu = 3 instead of 7
and RandAugment drawn once per ``--ra-group`` 4 images instead of per image. The numbers are
therefore far below published ones and only the comparison within a setting is meaningful.

Usage::

    nice -n 10 python scripts/weak_supervision_table.py            # the whole table
    python scripts/weak_supervision_table.py --seeds 0 --rounds 5  # a quick calibration
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedsim.config import compose  # noqa: E402
from fedsim.outputs import read_metrics  # noqa: E402
from fedsim.report import mean_std  # noqa: E402

SETTINGS: dict[str, tuple[list[str], list[str], str]] = {
    "clean": (["weak_labels=clean"], ["supervised"], "true labels"),
    "sym40": (
        ["weak_labels=noisy", "weak_labels.noise_type=symmetric", "weak_labels.rate=0.4"],
        ["supervised", "gce", "sce", "coteaching", "dpc", "bldr"],
        "40% symmetric noise",
    ),
    "partial_q0.3": (
        ["weak_labels=partial", "weak_labels.q=0.3", "weak_labels.eta=0.0"],
        ["proden", "cc", "rc"],
        "partial labels, q = 0.3",
    ),
    "semi5": (
        ["weak_labels=semi", "weak_labels.labeled_ratio=0.05"],
        ["supervised", "fixmatch", "flexmatch", "fixmatch_identity"],
        "5% labels",
    ),
}
EXTRA = ("dpc", "bldr")  # run after every seed of the other methods
#: table rows that run a registered method with extra overrides: name -> (local, overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    # FixMatch with the original image as the weak view (the spec's `weak_view: identity`)
    "fixmatch_identity": ("fixmatch", ["local.flip=false", "local.pad=0"]),
}
LABEL = {
    "supervised": "CE",
    "gce": "GCE",
    "sce": "SCE",
    "coteaching": "Co-teaching",
    "dpc": "DPC loss",
    "bldr": "BLDR core",
    "proden": "PRODEN",
    "cc": "CC",
    "rc": "RC",
    "fixmatch": "FixMatch",
    "flexmatch": "FlexMatch",
    "fixmatch_identity": "FixMatch, identity weak view",
}


def overrides(args: argparse.Namespace, setting: str, method: str, seed: int) -> list[str]:
    """The config overrides of one run."""
    weak, _, _ = SETTINGS[setting]
    local, extra = VARIANTS.get(method, (method, []))
    out = [
        "dataset=fashion_mnist",
        f"dataset.root={args.data_root}",
        "partition=dirichlet",
        "partition.alpha=0.5",
        "num_clients=10",
        "clients_per_round=10",
        "model=mlp",
        "strategy=fedavg",
        f"rounds={args.rounds}",
        f"max_train_samples={args.max_train_samples}",
        f"seed={seed}",
        "progress=false",
        "tensorboard=false",
        "checkpoint_every=0",
        f"local={local}",
        f"local.epochs={args.epochs}",
        "local.batch_size=32",
        "local.lr=0.05",
        *weak,
        *extra,
    ]
    if method == "coteaching":
        out.append("local.forget_rate=0.4")  # tau = the noise rate (the paper's setting)
    if local in ("fixmatch", "flexmatch"):
        out += [f"local.mu={args.mu}", f"local.ra_group={args.ra_group}"]
    return out


def run_one(args: argparse.Namespace, setting: str, method: str, seed: int) -> dict:
    """Run (or reuse) one configuration; return its summary with the per-round accuracies."""
    from fedsim.runner import run

    run_dir = Path(args.runs_dir) / setting / method / f"seed{seed}"
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        cfg = compose(overrides(args, setting, method, seed))
        cfg.output_dir = str(run_dir)
        t0 = time.time()
        run(cfg)
        print(f"{setting:14s} {method:11s} seed {seed}: {time.time() - t0:6.1f} s", flush=True)
    summary = json.loads(summary_path.read_text())
    metrics = read_metrics(run_dir)
    summary["curve"] = [m.get("eval_accuracy") for m in metrics if "eval_accuracy" in m]
    quality = (run_dir / "label_quality.csv").read_text().splitlines()
    header = quality[0].split(",")
    rows = [dict(zip(header, r.split(","), strict=True)) for r in quality[1:]]
    summary["quality"] = {
        k: statistics.mean(float(r[k]) for r in rows)
        for k in ("noise_rate", "mean_candidates", "coverage")
    }
    summary["labeled"] = sum(int(r["labeled"]) for r in rows)
    summary["n"] = sum(int(r["n"]) for r in rows)
    return summary


def pct(values: list[float]) -> str:
    """``mean ± std`` in percent over seeds (:func:`fedsim.report.mean_std`)."""
    return mean_std(values, scale=100, empty="–")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train-samples", type=int, default=6000)
    parser.add_argument("--mu", type=int, default=3)
    parser.add_argument("--ra-group", type=int, default=4)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "weak_supervision_table"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "weak_supervision"))
    parser.add_argument(
        "--extra-seeds",
        type=int,
        nargs="*",
        default=None,
        help=f"seeds of the extra methods {EXTRA} (default: --seeds)",
    )
    parser.add_argument(
        "--collect-only", action="store_true", help="only tabulate the runs already finished"
    )
    args = parser.parse_args()

    if not args.collect_only:
        from fedsim.engine.fast import _ray_init

        _ray_init(compose(["engine.num_cpus=2"]))  # one Ray for all runs (each run: new actors)
    t_start = time.time()
    # Seed-major, the extra noisy-label methods last: a cut-short invocation leaves whole seeds.
    extra_seeds = args.seeds if args.extra_seeds is None else args.extra_seeds
    plan = [
        (setting, method, seed)
        for extra in (False, True)
        for seed in (extra_seeds if extra else args.seeds)
        for setting in args.settings
        for method in SETTINGS[setting][1]
        if (method in EXTRA) == extra
    ]
    for setting, method, seed in plan:
        if not args.collect_only:
            run_one(args, setting, method, seed)
    results: dict[str, dict[str, list[dict]]] = {}
    for setting in args.settings:
        for method in SETTINGS[setting][1]:
            for seed in extra_seeds if method in EXTRA else args.seeds:
                if args.collect_only and not _done(args, setting, method, seed):
                    continue
                s = run_one(args, setting, method, seed)
                results.setdefault(setting, {}).setdefault(method, []).append(s)
    write_outputs(args, results, time.time() - t_start)


def _done(args: argparse.Namespace, setting: str, method: str, seed: int) -> bool:
    return (Path(args.runs_dir) / setting / method / f"seed{seed}" / "summary.json").is_file()


def write_outputs(args: argparse.Namespace, results: dict, seconds: float) -> None:
    """The Markdown table and the accuracy-per-round figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "| setting | realised label quality (mean over clients) | method | final accuracy (%) "
        "| best (%) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    means: dict[tuple[str, str], float] = {}
    for setting, methods in results.items():
        for method, runs in methods.items():
            q = runs[0]["quality"]
            lab = runs[0]["labeled"] / max(runs[0]["n"], 1)
            quality = (
                f"noise {q['noise_rate']:.3f}, set size {q['mean_candidates']:.2f}, "
                f"coverage {q['coverage']:.3f}, labeled {lab:.3f}"
            )
            finals = [r["final_accuracy"] for r in runs]
            means[(setting, method)] = statistics.mean(finals)
            lines.append(
                f"| {SETTINGS[setting][2]} | {quality} | {LABEL[method]} | {pct(finals)} | "
                f"{pct([r['best_accuracy'] for r in runs])} | {len(runs)} |"
            )
    checks = shape_checks(means)
    text = lines
    out.with_suffix(".table.md").write_text(
        "\n".join(text)
        + "\n\n"
        + "\n".join(checks)
        + f"\n\nrounds {args.rounds}, local epochs {args.epochs}, "
        f"max_train_samples {args.max_train_samples}, mu {args.mu}, ra_group {args.ra_group}, "
        f"seeds {args.seeds}; this invocation took {seconds / 60:.1f} min\n"
    )
    print("\n".join(text + [""] + checks))

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (setting, methods) in zip(axes[0], results.items(), strict=True):
        for method, runs in methods.items():
            curves = [r["curve"] for r in runs]
            k = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(k)]
            ax.plot(range(1, k + 1), mean, label=LABEL[method])
        if "clean" in results and setting != "clean":
            runs = results["clean"]["supervised"]
            k = min(len(r["curve"]) for r in runs)
            ref = [statistics.mean(r["curve"][i] for r in runs) for i in range(k)]
            ax.plot(range(1, k + 1), ref, "k--", lw=0.8, label="CE, clean labels")
        ax.set_title(SETTINGS[setting][2])
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def shape_checks(means: dict[tuple[str, str], float]) -> list[str]:
    """The issue's expected shape, checked on the means (not assumed)."""
    out = ["Expected shape (checked on the means over seeds):", ""]

    def have(*keys: tuple[str, str]) -> bool:
        return all(k in means for k in keys)

    ce_noisy = ("sym40", "supervised")
    for m in ("gce", "sce", "coteaching"):
        if have(ce_noisy, ("sym40", m)):
            d = 100 * (means[("sym40", m)] - means[ce_noisy])
            out.append(f"- 40% symmetric noise: {LABEL[m]} beats CE: {d > 0} ({d:+.2f} points)")
    clean = ("clean", "supervised")
    for m in ("proden", "cc", "rc"):
        if have(clean, ("partial_q0.3", m)):
            d = 100 * (means[("partial_q0.3", m)] - means[clean])
            out.append(f"- partial q = 0.3: {LABEL[m]} vs clean CE: {d:+.2f} points")
    for m in ("fixmatch", "flexmatch", "fixmatch_identity"):
        if have(("semi5", "supervised"), ("semi5", m)):
            d = 100 * (means[("semi5", m)] - means[("semi5", "supervised")])
            out.append(f"- 5% labels: {LABEL[m]} beats supervised CE: {d > 0} ({d:+.2f} points)")
    return out


if __name__ == "__main__":
    main()
