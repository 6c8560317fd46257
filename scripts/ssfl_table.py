"""Semi-supervised FL: where the labels are (ssfl setting) x method, on Fashion-MNIST.

Fashion-MNIST from ``../shared/data``, 10 clients, all sampled every round, Dirichlet label skew
alpha 0.1 and 0.5, 5% labels:

- ``labels_at_client``: every client keeps 5% of its samples labeled;
- ``labels_at_server``: the server holds 5% of the training pool (removed from the clients' pool),
  the clients hold unlabeled data only; the server trains on it (warm start, then one epoch after
  every aggregation) for every method;
- ``partial_client``: 1 of the 10 clients is fully labeled, the other 9 unlabeled (its share of
  the data, hence of the labels, depends on the Dirichlet draw; about 10% on average, reported
  per run in the table's ``labels`` column).

Methods (``local``): ``supervised`` (CE on labeled samples only; with labels at the server no client
trains and the run is server-only), ``fixmatch`` (FedAvg + FixMatch; unlabeled clients use the
unlabeled term alone), ``fedlabel`` (persistent local model, variance score, beta 0.95,
lambda0 1), ``semifl`` (pseudo-labels once per round with the received model, fix + mix losses,
clients averaged with equal weights).

Every run goes through :func:`fedsim.runner.run` with a composed config; run directories are kept
under ``--runs-dir`` and a finished run is not repeated (the script can be stopped and resumed, and
``--collect-only`` tabulates what has finished). Results: a Markdown table (mean ± std over seeds of
the final test accuracy and of the pooled accuracy of the pseudo-labels the clients used in the
last round) and a PNG of the mean test accuracy per round.

Budget (2 CPU cores shared with four other jobs, load average 40+ while the table ran; chosen
so that the whole table fits in about 35-50 minutes there). Reduced, against the references:

- data: a seeded subset of ``--max-train-samples`` 3000 training images (of 60000), about 300
  per client; the test split is whole (10000);
- model: ``mlp`` (784-200-200-10) instead of a CNN / WideResNet;
- rounds: ``--rounds`` 10 rounds of 1 local epoch (references: 200-800 rounds);
- FixMatch/FedLabel: mu = 3 instead of 7; RandAugment drawn once per ``--ra-group`` 16 images
  instead of per image;
- SemiFL: ``--semifl-epochs`` 1 local epoch instead of 5, batch 32 instead of 10;
- server step (labels at the server): 5 warm-up epochs, then 1 epoch per round.

The numbers are therefore far below published ones; only comparisons within a setting mean
anything. The actors of the fast engine are shared by all runs (:func:`share_actor_pool`).

Usage::

    nice -n 10 python scripts/ssfl_table.py                # the whole table
    python scripts/ssfl_table.py --seeds 0 --alphas 0.5 --settings labels_at_client  # calibrate
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

SETTINGS = {
    "labels_at_client": (
        ["ssfl=labels_at_client", "ssfl.labeled_ratio=0.05"],
        "labels at clients (5% each)",
    ),
    "labels_at_server": (
        ["ssfl=labels_at_server", "ssfl.labeled_ratio=0.05"],
        "labels at the server (5%)",
    ),
    "partial_client": (
        ["ssfl=partial_client", "ssfl.labeled_clients=1"],
        "1 of 10 clients labeled",
    ),
}
METHODS = ("supervised", "fixmatch", "fedlabel", "semifl")
LABEL = {
    "supervised": "supervised only",
    "fixmatch": "FedAvg+FixMatch",
    "fedlabel": "FedLabel",
    "semifl": "SemiFL",
}


def overrides(
    args: argparse.Namespace, setting: str, method: str, alpha: float, seed: int
) -> list[str]:
    """The config overrides of one run."""
    out = [
        "dataset=fashion_mnist",
        f"dataset.root={args.data_root}",
        "partition=dirichlet",
        f"partition.alpha={alpha}",
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
        f"local={method}",
        "local.epochs=1",
        "local.batch_size=32",
        *SETTINGS[setting][0],
    ]
    if method in ("fixmatch", "fedlabel"):
        out += [f"local.mu={args.mu}", f"local.ra_group={args.ra_group}", "local.lr=0.05"]
    elif method == "semifl":
        out += [f"local.epochs={args.semifl_epochs}", f"local.ra_group={args.ra_group}"]
    else:
        out += ["local.lr=0.05"]
    return out


def run_dir_of(
    args: argparse.Namespace, setting: str, method: str, alpha: float, seed: int
) -> Path:
    return Path(args.runs_dir) / f"alpha{alpha}" / setting / method / f"seed{seed}"


def run_one(args: argparse.Namespace, setting: str, method: str, alpha: float, seed: int) -> dict:
    """Run (or reuse) one configuration; return its summary with the per-round metrics."""
    from fedsim.runner import run

    run_dir = run_dir_of(args, setting, method, alpha, seed)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        cfg = compose(overrides(args, setting, method, alpha, seed))
        cfg.output_dir = str(run_dir)
        t0 = time.time()
        run(cfg)
        print(
            f"alpha {alpha} {setting:16s} {method:10s} seed {seed}: {time.time() - t0:6.1f} s",
            flush=True,
        )
    summary = json.loads(summary_path.read_text())
    metrics = read_metrics(run_dir)
    summary["curve"] = [m.get("eval_accuracy") for m in metrics if "eval_accuracy" in m]
    pl = [m.get("pseudo_label_accuracy") for m in metrics]
    summary["pl_last"] = pl[-1] if pl and pl[-1] is not None else None
    rate = [m.get("pseudo_label_rate") for m in metrics]
    summary["pl_rate_last"] = rate[-1] if rate and rate[-1] is not None else None
    quality = (run_dir / "label_quality.csv").read_text().splitlines()
    header = quality[0].split(",")
    rows = [dict(zip(header, r.split(","), strict=True)) for r in quality[1:]]
    n_clients = sum(int(r["n"]) for r in rows)
    cfg_text = (run_dir / "config.yaml").read_text()
    server = 0
    if setting == "labels_at_server":
        from omegaconf import OmegaConf

        from fedsim.federation import build_federation

        server = len(build_federation(OmegaConf.create(cfg_text)).server_indices)
    summary["label_share"] = (sum(int(r["labeled"]) for r in rows) + server) / (n_clients + server)
    return summary


def share_actor_pool(cfg: object) -> None:
    """One Ray and one pool of ``engine=fast`` actors for all runs of this script.

    Starting the actors (each imports PyTorch and Flower) costs about a minute per run on the
    loaded 2-core machine, more than a whole run's rounds. The actors hold nothing of a run beyond
    caches keyed by the run's config (each run loads its config and builds a fresh client runtime;
    client contexts live in the driver), so reusing them does not change any result; the pool is
    stopped when the script exits.
    """
    import atexit

    from fedsim.engine import EngineSession

    session = EngineSession(cfg.engine)  # type: ignore[attr-defined]
    session.__enter__()  # every fedsim.runner.run in this process runs on it
    atexit.register(session.__exit__, None, None, None)


def pct(values: list[float]) -> str:
    """``mean ± std`` in percent over seeds (:func:`fedsim.report.mean_std`)."""
    return mean_std(values, scale=100, empty="–")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-train-samples", type=int, default=3000)
    parser.add_argument("--mu", type=int, default=3)
    parser.add_argument("--ra-group", type=int, default=16)
    parser.add_argument("--semifl-epochs", type=int, default=1)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "ssfl_table"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "ssfl"))
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished runs only")
    args = parser.parse_args()

    if not args.collect_only:
        share_actor_pool(compose(["engine.num_cpus=2"]))
    t_start = time.time()
    plan = [
        (setting, method, alpha, seed)
        for seed in args.seeds  # seed-major: a cut-short invocation leaves whole seeds
        for alpha in args.alphas
        for setting in args.settings
        for method in args.methods
    ]
    if not args.collect_only:
        for setting, method, alpha, seed in plan:
            try:
                run_one(args, setting, method, alpha, seed)
            except Exception as e:  # noqa: BLE001  (reported, and the run is marked as not run)
                print(f"FAILED alpha {alpha} {setting} {method} seed {seed}: {e!r}", flush=True)
    results: dict[tuple[float, str, str], list[dict]] = {}
    missing = []
    for setting, method, alpha, seed in plan:
        if not (run_dir_of(args, setting, method, alpha, seed) / "summary.json").is_file():
            missing.append((setting, method, alpha, seed))
            continue
        results.setdefault((alpha, setting, method), []).append(
            run_one(args, setting, method, alpha, seed)
        )
    write_outputs(args, results, missing, time.time() - t_start)


def write_outputs(args: argparse.Namespace, results: dict, missing: list, seconds: float) -> None:
    """The Markdown table and the accuracy-per-round figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "| Dirichlet α | setting | labels | method | final test accuracy (%) "
        "| pseudo-label accuracy, last round (%) | pseudo-labels used (%) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    means: dict[tuple[float, str, str], float] = {}
    for (alpha, setting, method), runs in sorted(
        results.items(),
        key=lambda kv: (kv[0][0], list(SETTINGS).index(kv[0][1]), METHODS.index(kv[0][2])),
    ):
        finals = [r["final_accuracy"] for r in runs]
        means[(alpha, setting, method)] = statistics.mean(finals)
        share = statistics.mean(r["label_share"] for r in runs)
        lines.append(
            f"| {alpha} | {SETTINGS[setting][1]} | {100 * share:.1f}% | {LABEL[method]} | "
            f"{pct(finals)} | {pct([r['pl_last'] for r in runs])} | "
            f"{pct([r['pl_rate_last'] for r in runs])} | {len(runs)} |"
        )
    checks = shape_checks(means)
    notes = [
        f"rounds {args.rounds}, 1 local epoch (SemiFL {args.semifl_epochs}), "
        f"max_train_samples {args.max_train_samples}, model mlp, mu {args.mu}, "
        f"ra_group {args.ra_group}, seeds {args.seeds}, alphas {args.alphas}; "
        f"this invocation took {seconds / 60:.1f} min",
    ]
    if missing:
        notes.append(
            "NOT RUN (out of time): "
            + ", ".join(f"α {a} {s} {m} seed {sd}" for s, m, a, sd in missing)
        )
    text = "\n".join(lines) + "\n\n" + "\n".join(checks) + "\n\n" + "\n".join(notes) + "\n"
    out.with_suffix(".table.md").write_text(text)
    print(text)

    alphas = sorted({k[0] for k in results})
    settings = [s for s in SETTINGS if any(k[1] == s for k in results)]
    fig, axes = plt.subplots(
        len(alphas), len(settings), figsize=(4.2 * len(settings), 3.2 * len(alphas)), squeeze=False
    )
    for i, alpha in enumerate(alphas):
        for j, setting in enumerate(settings):
            ax = axes[i][j]
            for method in METHODS:
                runs = results.get((alpha, setting, method))
                if not runs:
                    continue
                curves = [r["curve"] for r in runs]
                k = min(len(c) for c in curves)
                mean = [statistics.mean(c[t] for c in curves) for t in range(k)]
                ax.plot(range(1, k + 1), mean, label=LABEL[method])
            ax.set_title(f"{SETTINGS[setting][1]}, α={alpha}", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def shape_checks(means: dict[tuple[float, str, str], float]) -> list[str]:
    """The issue's questions, answered from the means over seeds (not assumed)."""
    out = ["Checks (means over seeds):", ""]
    for alpha, setting in sorted({(a, s) for a, s, _ in means}):
        fl, fm, sup = (
            means.get((alpha, setting, m)) for m in ("fedlabel", "fixmatch", "supervised")
        )
        if fl is not None and fm is not None:
            out.append(
                f"- α {alpha}, {setting}: FedLabel beats FedAvg+FixMatch: {fl > fm} "
                f"({100 * (fl - fm):+.2f} points)"
            )
        for m in ("fedlabel", "fixmatch", "semifl"):
            v = means.get((alpha, setting, m))
            if v is not None and sup is not None:
                out.append(
                    f"- α {alpha}, {setting}: {LABEL[m]} beats supervised only: {v > sup} "
                    f"({100 * (v - sup):+.2f} points)"
                )
    return out


if __name__ == "__main__":
    main()
