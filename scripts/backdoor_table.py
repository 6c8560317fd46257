"""Backdoor table: MA and ASR on MNIST under CBA (0 -> 5) for no defense, each aggregation rule
and FLAIN, at several malicious client ratios.

Every run is FLAIN's reference setting (``experiment=flain_mnist``: 50 clients, 25 per round,
Dirichlet 0.5, CBA 5x5 at 23-27, poison fraction 0.5, exactly floor(50 * MCR * 0.5) attackers per
round, Adam 1e-3, 2 local epochs, batch 256) reduced for a shared 2-core CPU: ``--rounds`` rounds
(default 5, the reference uses 200), a seeded ``--max-train-samples`` subset of the MNIST train split
(default 6000 of 60000, about 120 images per client), local batch size ``--batch-size`` 32 instead
of 256 (with 120 images a client would otherwise take one Adam step per epoch) and a narrower CNN
(``--channels 16 32``: conv widths 16/32, so fc1 is 1568 -> 128 instead of 3136 -> 128). MA and ASR are measured on the MNIST test split minus the held-out
FLAIN aux set (80/class) and FLTrust root set (10/class).

FLAIN (reference mode), FLAIN (rollback mode) and dormant-neuron pruning are applied to the final
model of the FedAvg run, so "no defense" is the FLAIN "before" value. Runs go through
``fedsim.runner.run`` with configs composed from ``conf/``; results are cached per run in
``--runs-dir`` (rerunning the script resumes), and the table goes to
``docs/results/backdoor.md`` with ``backdoor_asr.png``.

    nice -n 10 python scripts/backdoor_table.py --rounds 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: rule name -> strategy overrides (robust rules assume f = 5 of 25 per round)
RULES: dict[str, list[str]] = {
    "fedavg": ["strategy=fedavg"],
    "krum": ["strategy=krum", "strategy.num_malicious_nodes=5"],
    "multikrum": [
        "strategy=multikrum",
        "strategy.num_malicious_nodes=5",
        "strategy.num_nodes_to_select=20",
    ],
    "bulyan": ["strategy=bulyan", "strategy.num_malicious_nodes=5"],
    "fedmedian": ["strategy=fedmedian"],
    "fedtrimmedavg": ["strategy=fedtrimmedavg", "strategy.beta=0.2"],
    "norm_clipping": ["strategy=norm_clipping", "strategy.clip_norm=3.0", "strategy.noise_std=0.0"],
    "weak_dp": ["strategy=norm_clipping", "strategy.clip_norm=5.0", "strategy.noise_std=0.025"],
    "dp_fixed_clipping": ["strategy=dp_fixed_clipping", "strategy.clipping_norm=3.0"],
    "fltrust": ["strategy=fltrust"],
    "flame": ["strategy=flame"],
    "foolsgold": ["strategy=foolsgold"],
    "rlr": ["strategy=rlr", "strategy.threshold=6"],
}
#: the table's rows (weak_dp and dp_fixed_clipping are available with --rules)
DEFAULT_RULES = [r for r in RULES if r not in ("weak_dp", "dp_fixed_clipping")]
POSTHOC = {
    "flain (rollback)": {"name": "flain", "mode": "rollback"},
    "dormant pruning": {"name": "dormant_pruning", "tolerance": 0.01, "step_fraction": 0.01},
}


def overrides(args: argparse.Namespace, rule: str, mcr: float, out: Path) -> list[str]:
    ch = ",".join(str(c) for c in args.channels)
    return [
        "experiment=flain_mnist",
        f"rounds={args.rounds}",
        f"attack.mcr={mcr}",
        f"dataset.root={args.data}",
        f"max_train_samples={args.max_train_samples}",
        f"model.params.channels=[{ch}]",
        f"local.batch_size={args.batch_size}",
        f"seed={args.seed}",
        "progress=false",
        "tensorboard=false",
        f"eval_every={args.rounds}",
        f"output_dir={out}",
        f"defense={'flain' if rule == 'fedavg' else 'none'}",
        *RULES[rule],
    ]


def run_one(args: argparse.Namespace, rule: str, mcr: float) -> dict:
    from fedsim.config import compose
    from fedsim.runner import run
    from server.components.defense import posthoc_defense

    out = Path(args.runs_dir) / f"mcr{mcr}_{rule}"
    done = out / "table_result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if args.cached_only:
        return {}
    t0 = time.time()
    summary = run(compose(overrides(args, rule, mcr, out)))
    result = {
        "rule": rule,
        "mcr": mcr,
        "ma": summary.get("final_ma"),
        "asr": summary.get("final_asr"),
        "seconds": time.time() - t0,
    }
    if rule == "fedavg":
        d = summary["defense"]
        result["flain"] = {"ma": d["ma_after"], "asr": d["asr_after"], **d}
        for label, spec in POSTHOC.items():
            r = posthoc_defense(out, spec)
            result[label] = {"ma": r["ma_after"], "asr": r["asr_after"], **r}
    done.write_text(json.dumps(result, indent=1))
    return result


def fmt_k(k: float | None) -> str:
    """A threshold for the Markdown (``None``: no flips kept)."""
    return "none" if k is None else f"{k:.4g}"


def table(results: list[dict], mcrs: list[float], args: argparse.Namespace) -> str:
    rows: dict[str, dict[float, tuple[float, float]]] = {}
    for r in results:
        name = "none (fedavg)" if r["rule"] == "fedavg" else r["rule"]
        rows.setdefault(name, {})[r["mcr"]] = (r["ma"], r["asr"])
        if r["rule"] == "fedavg":
            for label in ("flain", *POSTHOC):
                key = "flain (reference)" if label == "flain" else label
                rows.setdefault(f"fedavg + {key}", {})[r["mcr"]] = (r[label]["ma"], r[label]["asr"])
    head = "| defense | " + " | ".join(f"MCR {m}: MA / ASR (%)" for m in mcrs) + " |"
    lines = [head, "|---|" + "---|" * len(mcrs)]
    for name, cells in rows.items():
        vals = []
        for m in mcrs:
            if m in cells and cells[m][0] is not None:
                ma, asr = cells[m]
                vals.append(f"{100 * ma:.1f} / {100 * asr:.1f}")
            else:
                vals.append("not run")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(results: list[dict], mcrs: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[float, float]] = {}
    for r in results:
        series.setdefault(r["rule"], {})[r["mcr"]] = r["asr"]
        if r["rule"] == "fedavg":
            series.setdefault("fedavg + flain", {})[r["mcr"]] = r["flain"]["asr"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in series.items():
        xs = [m for m in mcrs if m in pts]
        style = "o-" if "flain" in name or name == "fedavg" else "x--"
        ax.plot(xs, [100 * pts[m] for m in xs], style, label=name)
    ax.set_xlabel("malicious client ratio (MCR)")
    ax.set_ylabel("ASR (%)")
    ax.set_xticks(mcrs)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("MNIST, CBA 0->5: attack success rate after training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start_ray() -> None:
    """One Ray instance for all runs (each run then only starts its actors)."""
    import logging
    import os
    import sys

    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    pythonpath = os.pathsep.join(p for p in sys.path if p)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    ray.init(
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mcr", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--rules", nargs="+", default=DEFAULT_RULES, choices=list(RULES))
    p.add_argument("--max-train-samples", type=int, default=6000)
    p.add_argument("--channels", type=int, nargs=2, default=[16, 32])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="only collect the runs already done in --runs-dir (missing cells: 'not run')",
    )
    p.add_argument(
        "--flain-tolerances",
        type=float,
        nargs="*",
        default=[],
        help="also apply FLAIN with these tolerances to each FedAvg run (post hoc)",
    )
    p.add_argument("--data", default=str((ROOT / ".." / "shared" / "data").resolve()))
    p.add_argument("--runs-dir", default=str(ROOT / "outputs" / "backdoor_table"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.cached_only:
        start_ray()
    results, t0 = [], time.time()
    for rule in args.rules:  # rule-major: every MCR of a row before the next row
        for mcr in args.mcr:
            r = run_one(args, rule, mcr)
            if not r:
                continue  # --cached-only and not run
            results.append(r)
            print(
                f"MCR {mcr} {rule}: MA {r['ma']:.4f} ASR {r['asr']:.4f} ({r['seconds']:.0f}s)",
                flush=True,
            )
            write(results, args, out, time.time() - t0)
    write(results, args, out, time.time() - t0)
    if args.flain_tolerances:
        for r in results:
            if r["rule"] == "fedavg":
                r["tolerance_sweep"] = tolerance_sweep(args, r["mcr"], args.flain_tolerances)
        write(results, args, out, time.time() - t0)


def tolerance_sweep(args: argparse.Namespace, mcr: float, tolerances: list[float]) -> list[dict]:
    """FLAIN (reference mode) with other tolerances on a FedAvg run's final model (post hoc; a
    sensitivity check beyond the reference, which uses tolerance 0 on MNIST)."""
    from server.components.defense import posthoc_defense

    run_dir = Path(args.runs_dir) / f"mcr{mcr}_fedavg"
    rows = []
    for tol in tolerances:
        cache = run_dir / f"flain_tolerance_{tol}.json"
        if cache.is_file():
            rows.append(json.loads(cache.read_text()))
            continue
        r = posthoc_defense(run_dir, {"name": "flain", "mode": "reference", "tolerance": tol})
        row = {"tolerance": tol, **r}
        cache.write_text(json.dumps(row, indent=1))
        rows.append(row)
    return rows


def write(results: list[dict], args: argparse.Namespace, out: Path, seconds: float) -> None:
    mcrs = list(args.mcr)
    text = [
        "# Backdoor attacks and defenses on MNIST (CBA, 0 -> 5)",
        "",
        f"Generated by `scripts/backdoor_table.py --rounds {args.rounds}`: FLAIN's reference setting "
        f"reduced for a shared 2-core CPU to {args.rounds} rounds (reference: 200), a "
        f"{args.max_train_samples}-image seeded subset of the MNIST train split, local batch size "
        f"{args.batch_size} (reference 256) and conv widths "
        f"{args.channels} (fc1 {args.channels[1] * 49} -> 128); seed {args.seed}, one run per cell. "
        "MA = clean accuracy and ASR = triggered class-0 test images predicted as 5, both on the test "
        "split minus the held-out aux (80/class) and root (10/class) sets, after the last round. "
        "FLAIN and dormant pruning are applied to the FedAvg run's final model. "
        f"Sum of the runs' wall times (each including its post-hoc defenses) "
        f"{sum(r['seconds'] for r in results) / 60:.1f} min.",
        "",
        table(results, mcrs, args),
        "",
        "![ASR against MCR](backdoor_asr.png)",
        "",
    ]
    flain = [r for r in results if r["rule"] == "fedavg"]
    if flain:
        text += ["FLAIN details (reference mode / rollback mode):", ""]
        for r in flain:
            f, rb = r["flain"], r["flain (rollback)"]
            text.append(
                f"- MCR {r['mcr']}: k* = {fmt_k(f['k_star'])}, flipped inputs {f['flip_count']} "
                f"(exactly-zero on aux: {f['dormant_inputs']}), aux acc {100 * f['aux_acc_before']:.1f} -> "
                f"{100 * f['aux_acc_after']:.1f}; rollback k* = {fmt_k(rb['k_star'])}, flipped {rb['flip_count']}; "
                f"dormant pruning zeroed {r['dormant pruning']['pruned']} inputs."
            )
        text.append("")
    sweeps = [r for r in flain if r.get("tolerance_sweep")]
    if sweeps:
        text += [
            "FLAIN tolerance sensitivity (reference mode, post hoc on the same final models; the "
            "reference uses tolerance 0 on MNIST):",
            "",
            "| MCR | tolerance | k* | flipped inputs | aux acc before -> after (%) | MA (%) | ASR (%) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sweeps:
            text.append(
                f"| {r['mcr']} | 0 | {fmt_k(r['flain']['k_star'])} | {r['flain']['flip_count']} | "
                f"{100 * r['flain']['aux_acc_before']:.1f} -> {100 * r['flain']['aux_acc_after']:.1f} | "
                f"{100 * r['flain']['ma']:.1f} | {100 * r['flain']['asr']:.1f} |"
            )
            for t in r["tolerance_sweep"]:
                text.append(
                    f"| {r['mcr']} | {t['tolerance']} | {fmt_k(t['k_star'])} | {t['flip_count']} | "
                    f"{100 * t['aux_acc_before']:.1f} -> {100 * t['aux_acc_after']:.1f} | "
                    f"{100 * t['ma_after']:.1f} | {100 * t['asr_after']:.1f} |"
                )
        text.append("")
    (out / "backdoor.md").write_text("\n".join(text))
    (out / "backdoor_results.json").write_text(json.dumps(results, indent=1))
    plot(results, mcrs, out / "backdoor_asr.png")


if __name__ == "__main__":
    main()
