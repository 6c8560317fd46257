#!/usr/bin/env python
"""Benchmark fedsim's simulation engines against each other and against the compute bound.

For each workload (clients x samples per client; a small CNN on 28x28 inputs; 10 rounds; every
client trains every round; 1 local epoch, batch 32, SGD) it runs, each in a fresh process:

- ``engine=flower``: Flower's stock simulation runtime;
- ``engine=fast``: fedsim's actor-pool grid;

and, in this process, the **compute bound**: the same local SGD steps (same clients, data, batch
order, one torch thread) run sequentially with no framework, divided by the number of workers:
the mean of ``--bound-rounds`` rounds (default 4) after a warm-up round, as ``s/round`` is a mean.
(Before 2026-11-22 it was the best of 2 rounds, which put the bound below the engines' means by
3-10% on this machine.)

Columns:
- ``startup s``: from launching the process to the end of round 1, minus one steady round
  (imports, Ray, actors, data, first-call costs: everything a run pays once);
- ``s/round``: mean wall seconds of rounds 2..R-1 (server-side evaluation runs only in round R);
- ``peak RSS GiB``: peak of the summed proportional set size (PSS) of the run's process tree
  (driver, Ray's daemons, workers), sampled every ``--mem-interval`` seconds (default 2: reading
  PSS costs about 10 ms of kernel time per process, so sampling more often slows the run measured);
- ``x bound``: s/round divided by the compute bound's s/round, measured right before and right
  after that run (their mean: this machine's speed drifts from minute to minute); the compute
  bound row shows the mean of all its measurements in a repetition.

``--vectorize off on`` runs ``engine=fast`` once per ``engine.vectorize`` value (a row each,
``fast[vec=on]``); the workload ``flain`` is FLAIN's reference round (``experiment=flain_mnist``:
25 of 50 clients, 2 epochs of Adam, batch 256, CNN 32/64/128 on MNIST; needs ``--data-root``).
Two more columns:
- ``GPU GiB``: peak GPU memory in use (``nvidia-smi``, sampled with the PSS; ``-`` on the CPU);
- ``x FLOP bound``: s/round divided by the FLOP bound, the time the round's training FLOPs take at
  the device's measured dense float32 rate: FLOPs per sample of one forward and backward pass
  (``torch.utils.flop_counter.FlopCounterMode`` on the workload's model: convolutions and matrix
  products), times the samples each client trains on per round, times the clients, divided by the
  rate of a float32 matrix product (2048 x 2048 on a GPU, 512 x 512 on the CPU with
  ``client_cpus`` threads) times the workers (on a GPU, one device: the rate itself).

The **parallel bound** row (skip it with ``--no-parallel-bound``) runs each worker's share of the
clients in its own plain process, all at once, with no framework: the per-round time the
hardware allows when every core trains at the same time. Where it is above 1.00x, the compute
bound (one process, divided by the workers) is not reachable on that machine.

Usage::

    python scripts/bench_engine.py                       # all workloads, both engines
    python scripts/bench_engine.py --workloads 10x600 --engines fast --rounds 5
    python scripts/bench_engine.py --markdown docs/results/engine.md
    python scripts/bench_engine.py --device cuda --client-gpus 0.25   # GPU rows
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKLOADS = ("10x600", "50x120", "200x30", "1000x6")
MODEL = ["model=cnn", "model.params.channels=[8,16]", "model.params.hidden=64"]
#: Timed rounds per bound measurement (after one warm-up round), averaged.
DEFAULT_BOUND_ROUNDS = 4


#: FLAIN's reference round (``experiment=flain_mnist``): its clients, per round.
FLAIN = "flain"
FLAIN_CLIENTS = 25


def overrides(
    clients: int, samples: int, rounds: int, engine: str, args: argparse.Namespace
) -> list[str]:
    """The fedsim config of one benchmark run (``engine`` may be ``fast[vec=MODE]``)."""
    vec = []
    if "[vec=" in engine:
        engine, mode = engine.rstrip("]").split("[vec=")
        vec = [f"engine.vectorize={mode}"]
    if clients == 0:  # FLAIN's reference round
        return [
            "experiment=flain_mnist",
            f"dataset.root={args.data_root}",
            f"rounds={rounds}",
            f"eval_every={rounds}",
            "defense=none",
            "tensorboard=false",
            f"engine={engine}",
            f"engine.client_cpus={args.client_cpus}",
            f"engine.client_gpus={args.client_gpus}",
            f"device={args.device}",
            "progress=false",
            *vec,
        ]
    data = ["dataset=mnist", f"dataset.root={args.data_root}"] if args.data_root else []
    return [
        *data,
        *MODEL,
        f"num_clients={clients}",
        f"clients_per_round={clients}",
        f"max_train_samples={clients * samples}",
        "partition=iid",
        f"rounds={rounds}",
        f"eval_every={rounds}",
        "checkpoint_every=0",
        "tensorboard=false",
        "local.epochs=1",
        "local.batch_size=32",
        "local.lr=0.05",
        f"engine={engine}",
        f"engine.client_cpus={args.client_cpus}",
        f"engine.client_gpus={args.client_gpus}",
        f"device={args.device}",
        "progress=false",
        *vec,
    ]


def parse_workload(w: str) -> tuple[int, int]:
    """``CLIENTSxSAMPLES`` as two integers; ``flain`` as ``(0, 0)``."""
    if w.lower() == FLAIN:
        return 0, 0
    clients, samples = (int(v) for v in w.lower().split("x"))
    return clients, samples


# ---- the FLOP bound ----------------------------------------------------------------------------
def flops_per_sample(cfg: Any) -> float:
    """FLOPs of one forward and backward pass per sample of ``cfg``'s model (FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedsim.data import load_dataset
    from fedsim.models import model_for

    data = load_dataset(str(cfg.dataset.name), root=str(cfg.dataset.root), download=False)
    model = model_for(cfg, data)
    b = 8
    x = torch.randn(b, data.in_channels, data.image_size, data.image_size)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(b, dtype=torch.long)).backward()
    return counter.get_total_flops() / b


def round_flops(clients: int, samples: int, args: argparse.Namespace) -> float:
    """Training FLOPs of one round: per-sample FLOPs x samples trained per client x clients."""
    from fedsim.config import compose
    from fedsim.federation import build_federation

    cfg = compose(overrides(clients, samples, 2, "fast", args))
    per = flops_per_sample(cfg)
    if clients == 0:  # FLAIN: the round's sampled clients, each its partition times its epochs
        fed = build_federation(cfg)
        sizes = sorted(len(fed.client_data(p)) for p in range(int(cfg.num_clients)))
        mean = sum(sizes) / len(sizes)
        return per * mean * FLAIN_CLIENTS * int(cfg.local.epochs)
    return per * samples * clients * int(cfg.local.epochs)


def device_rate(args: argparse.Namespace) -> float:
    """Float32 FLOP/s of a dense matrix product on the benchmark's device (best of 5)."""
    import torch

    cuda = args.device.startswith("cuda")
    dev = torch.device("cuda" if cuda else "cpu")
    n = 2048 if cuda else 512
    if not cuda:
        torch.set_num_threads(max(1, int(args.client_cpus)))
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    best = float("inf")
    for _ in range(6):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * n**3 / best


def _gpu_used() -> int:
    """Bytes of GPU memory in use on every visible GPU (0 without nvidia-smi)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(int(v) for v in out.split() if v.isdigit()) * 2**20


# ---- child: one run in a fresh process --------------------------------------------------------
def child(argv: list[str]) -> None:
    from fedsim.config import compose
    from fedsim.runner import run

    out = Path(argv[0])
    cfg = compose(argv[1:])
    cfg.output_dir = str(out)
    run(cfg)


def _pss(pid: int) -> int:
    """Proportional set size of one process (shared pages split among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_pss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    return sum(_pss(p.pid) for p in procs)


def measure(clients: int, samples: int, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one engine on one workload in a subprocess; return its timings and peak memory."""
    from fedsim.outputs import read_metrics

    with tempfile.TemporaryDirectory(prefix="fedsim-bench-") as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(out),
            *overrides(clients, samples, args.rounds, engine, args),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        launch = time.time()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        peak = gpu_peak = 0
        cuda = args.device.startswith("cuda")
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, gpu_peak
            while not done.is_set():
                peak = max(peak, _tree_pss(proc.pid))
                if cuda:
                    gpu_peak = max(gpu_peak, _gpu_used())
                done.wait(args.mem_interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = proc.communicate()
        done.set()
        sampler.join()
        if proc.returncode != 0:
            raise RuntimeError(f"{engine} {clients}x{samples} failed:\n{output[-3000:]}")
        metrics = read_metrics(out)
    rounds = [r["round_seconds"] for r in metrics]
    steady_rounds = rounds[1:-1] or rounds[1:]  # the last round also evaluates on the test split
    steady = sum(steady_rounds) / max(1, len(steady_rounds))
    first_end = metrics[0]["timestamp"]
    return {
        "startup": first_end - launch - steady,
        "per_round": steady,
        "peak_gib": peak / 2**30,
        "gpu_gib": gpu_peak / 2**30 if cuda else None,
        "accuracy": metrics[-1].get("eval_accuracy"),
    }


def _local_rounds(
    clients: int, samples: int, share: list[int], args: argparse.Namespace, *, ready: Any = None
) -> list[float]:
    """Seconds of each of ``1 + args.bound_rounds`` rounds of local SGD over the clients in
    ``share`` (one torch thread, no framework); the first is a warm-up. ``ready`` (if given) is
    called after the data and model are built, before the timed rounds."""
    import torch

    from clients.learners import build_learner
    from fedsim.config import compose
    from fedsim.federation import build_federation
    from fedsim.models import build_model
    from fedsim.seeding import client_seed

    cfg = compose(overrides(clients, samples, 2, "flower", args))
    fed = build_federation(cfg)
    torch.set_num_threads(max(1, int(args.client_cpus)))
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    torch.manual_seed(0)
    model = build_model(
        "cnn",
        num_classes=fed.data.num_classes,
        in_channels=fed.data.in_channels,
        image_size=fed.data.image_size,
        params={"channels": [8, 16], "hidden": 64},
    ).to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    learner = build_learner("supervised", {"epochs": 1, "batch_size": 32, "lr": 0.05})
    if ready is not None:
        ready()
    times = []
    for rnd in range(1, args.bound_rounds + 2):
        t0 = time.perf_counter()
        for pid in share:
            model.load_state_dict(init)
            seed = client_seed(0, rnd, pid)
            learner.train(
                model,
                fed.client_data(pid),
                device=device,
                generator=torch.Generator().manual_seed(seed),
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def compute_bound(clients: int, samples: int, args: argparse.Namespace) -> float:
    """Seconds per round of the same local SGD in one process, divided by the workers."""
    times = _local_rounds(clients, samples, list(range(clients)), args)
    per_round = sum(times[1:]) / len(times[1:])  # after warm-up; the mean, as for the engines
    workers = max(1, int(args.workers))
    return per_round / workers


def parallel_bound(clients: int, samples: int, args: argparse.Namespace) -> float:
    """Seconds per round when ``workers`` plain processes (no framework) each run their share
    of the clients at the same time: what the hardware gives when every core trains at once
    (on a VM, cores that share caches or memory bandwidth make this slower than the bound)."""
    workers = max(1, int(args.workers))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--parallel-child", str(w), str(clients), str(samples)]
            + [f"--{k.replace('_', '-')}={v}" for k, v in _child_args(args).items()],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for p in procs:  # all set up before any starts timing
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    rounds = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    # per round, the slowest process sets the pace; the mean of the rounds after warm-up
    paced = [max(r[i] for r in rounds) for i in range(1, len(rounds[0]))]
    return sum(paced) / len(paced)


def _child_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data_root": args.data_root,
        "client_cpus": args.client_cpus,
        "client_gpus": args.client_gpus,
        "device": args.device,
        "workers": args.workers,
        "bound_rounds": args.bound_rounds,
    }


def parallel_child(argv: list[str]) -> None:
    w, clients, samples = (int(v) for v in argv[:3])
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="")
    ap.add_argument("--client-cpus", type=float, default=1.0)
    ap.add_argument("--client-gpus", type=float, default=0.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bound-rounds", type=int, default=DEFAULT_BOUND_ROUNDS)
    args = ap.parse_args(argv[3:])
    share = [pid for pid in range(clients) if pid % args.workers == w]

    def ready() -> None:
        print("READY", flush=True)
        sys.stdin.readline()

    print(json.dumps(_local_rounds(clients, samples, share, args, ready=ready)), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--parallel-child":
        parallel_child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workloads", nargs="+", default=list(DEFAULT_WORKLOADS), help="CLIENTSxSAMPLES"
    )
    ap.add_argument("--engines", nargs="+", default=["flower", "fast"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument(
        "--data-root",
        default=str(REPO.parent / "shared" / "data")
        if (REPO.parent / "shared" / "data" / "MNIST").is_dir()
        else "",
        help="folder holding MNIST in torchvision's layout (default ../shared/data when present); "
        "empty: use scikit-learn's digits (8x8) instead",
    )
    ap.add_argument("--client-cpus", type=float, default=1.0)
    ap.add_argument("--client-gpus", type=float, default=0.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="workers that share the compute bound (default: CPU count)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each workload this many times (bounds and engines, interleaved); the "
        "table shows medians, with ranges",
    )
    ap.add_argument(
        "--no-parallel-bound",
        action="store_true",
        help="skip the parallel bound (the workers' shares run in plain processes at once)",
    )
    ap.add_argument(
        "--bound-rounds",
        type=int,
        default=DEFAULT_BOUND_ROUNDS,
        help="timed rounds per bound measurement, after one warm-up round; their mean is taken, "
        "as the engines' steady rounds are averaged",
    )
    ap.add_argument(
        "--vectorize",
        nargs="+",
        choices=("auto", "on", "off"),
        help="run engine=fast once per engine.vectorize value (rows fast[vec=MODE])",
    )
    ap.add_argument(
        "--no-compute-bound",
        action="store_true",
        help="skip the compute and parallel bounds (the FLOP bound is still computed)",
    )
    ap.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")
    ap.add_argument(
        "--mem-interval", type=float, default=2.0, help="seconds between memory samples"
    )
    args = ap.parse_args()
    if args.bound_rounds < 1:
        ap.error(f"--bound-rounds {args.bound_rounds}: allowed an integer >= 1")
    if args.client_gpus > 0 and args.workers == (os.cpu_count() or 1):
        args.workers = max(1, int(round(1 / args.client_gpus)))

    if args.vectorize:
        args.engines = [
            e
            for engine in args.engines
            for e in ([f"fast[vec={m}]" for m in args.vectorize] if engine == "fast" else [engine])
        ]
    rate = device_rate(args) * (1 if args.device.startswith("cuda") else max(1, args.workers))
    print(f"FLOP rate {rate / 1e9:.1f} GFLOP/s (dense float32 matmul x workers)", flush=True)
    rows = []
    for w in args.workloads:
        clients, samples = parse_workload(w)
        flop_bound = round_flops(clients, samples, args) / rate
        print(f"{w}: FLOP bound {flop_bound:.4f} s/round", flush=True)
        no_bound = args.no_compute_bound or clients == 0  # FLAIN: Adam, its own model
        reps: list[dict[str, dict[str, Any]]] = []
        for rep in range(args.repeat):
            # Each repetition measures the bounds and then every engine, close together in time,
            # and ratios are taken within a repetition (this machine's speed drifts by minutes).
            got: dict[str, dict[str, Any]] = {}
            bound = float("nan") if no_bound else compute_bound(clients, samples, args)
            if not no_bound:
                got["compute bound"] = {"startup": None, "per_round": bound, "peak_gib": None}
            print(f"{w} [{rep + 1}/{args.repeat}]: compute bound {bound:.3f} s/round", flush=True)
            if args.workers > 1 and not args.no_parallel_bound and not no_bound:
                par = parallel_bound(clients, samples, args)
                got["parallel bound"] = {"startup": None, "per_round": par, "peak_gib": None}
                print(f"{w}: parallel bound {par:.3f} s/round ({par / bound:.2f}x)", flush=True)
            order = list(args.engines) if rep % 2 == 0 else list(reversed(args.engines))
            bounds = [bound]
            for r in got.values():
                r["x_bound"] = r["per_round"] / bound
            for engine in order:
                r = measure(clients, samples, engine, args)
                # The bound again right after the engine: its ratio is taken against the mean
                # of the bounds measured just before and just after it.
                after = float("nan") if no_bound else compute_bound(clients, samples, args)
                ref = (bounds[-1] + after) / 2
                bounds.append(after)
                r["x_bound"] = None if no_bound else r["per_round"] / ref
                r["x_flop"] = r["per_round"] / flop_bound
                got[engine] = r
                print(
                    f"{w}: {engine}: startup {r['startup']:.1f}s, {r['per_round']:.3f} s/round "
                    f"(bound {ref:.3f}: {bounds[-2]:.3f} before, {after:.3f} after; "
                    f"{r['x_flop']:.1f}x FLOP bound), peak {r['peak_gib']:.2f} GiB",
                    flush=True,
                )
            if not no_bound:
                got["compute bound"]["per_round"] = sum(bounds) / len(bounds)
            reps.append(got)
        rows.extend(summarise(w, reps))
    table = render(rows, args)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")


def summarise(workload: str, reps: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per engine: medians over the repetitions (ratios taken within each repetition),
    with the range of ``x bound`` and of the fast-vs-flower ratios when there are several."""
    import statistics

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    rows = []
    for engine in reps[0]:
        runs = [rep[engine] for rep in reps]
        x = [r["x_bound"] for r in runs if r.get("x_bound") is not None]
        flop = [r["x_flop"] for r in runs if r.get("x_flop") is not None]
        gpu = [r["gpu_gib"] for r in runs if r.get("gpu_gib") is not None]
        row: dict[str, Any] = {
            "workload": workload,
            "engine": engine,
            "startup": None if runs[0]["startup"] is None else med([r["startup"] for r in runs]),
            "per_round": med([r["per_round"] for r in runs]),
            "peak_gib": None if runs[0]["peak_gib"] is None else max(r["peak_gib"] for r in runs),
            "x_bound": med(x) if x else None,
            "x_range": (min(x), max(x)) if len(x) > 1 else None,
            "x_flop": med(flop) if flop else None,
            "gpu_gib": max(gpu) if gpu else None,
            "n": len(runs),
        }
        if (
            engine.startswith("fast[vec=")
            and engine != "fast[vec=off]"
            and "fast[vec=off]" in reps[0]
        ):
            per = [rep["fast[vec=off]"]["per_round"] / rep[engine]["per_round"] for rep in reps]
            row["vs_off"] = (med(per), min(per), max(per))
        if engine == "fast" and "flower" in reps[0]:
            per = [rep["flower"]["per_round"] / rep["fast"]["per_round"] for rep in reps]
            start = [rep["fast"]["startup"] / rep["flower"]["startup"] for rep in reps]
            row["vs_flower"] = (med(per), min(per), max(per), med(start), min(start), max(start))
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """A Markdown table of the results, with the speed-up of fast over flower per workload."""

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    device = (
        args.device if args.client_gpus == 0 else f"{args.device}, client_gpus={args.client_gpus}"
    )
    lines = [
        f"Workloads: clients x samples, small CNN (conv 8/16, fc 64) on 28x28, {args.rounds} rounds, "
        f"all clients every round, 1 epoch, batch 32; device {device}; {args.workers} worker(s); "
        f"{os.cpu_count()} CPU cores; {args.repeat} repetition(s) per workload"
        + (", medians (range)." if args.repeat > 1 else "."),
        "",
        "| workload | engine | startup s | s/round | x bound | x FLOP bound | peak RSS GiB "
        "| GPU GiB | fast vs flower |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speed = ""
        if r.get("vs_flower"):
            p, plo, phi, st, slo, shi = r["vs_flower"]
            speed = f"per-round speed-up {p:.1f}x; start-up {st:.2f}x flower's"
            if r["n"] > 1:
                speed += f" (per round {plo:.1f}-{phi:.1f}x, start-up {slo:.2f}-{shi:.2f}x)"
        if r.get("vs_off"):
            p, plo, phi = r["vs_off"]
            speed = f"per round {p:.2f}x vec=off's" + (
                f" ({plo:.2f}-{phi:.2f}x)" if r["n"] > 1 else ""
            )
        xb = f(r["x_bound"], ".2f")
        if r.get("x_range"):
            xb += f" ({r['x_range'][0]:.2f}-{r['x_range'][1]:.2f})"
        lines.append(
            f"| {r['workload']} | {r['engine']} | {f(r['startup'], '.1f')} | {f(r['per_round'], '.3f')} | "
            f"{xb} | {f(r.get('x_flop'), '.1f')} | {f(r['peak_gib'], '.2f')} | "
            f"{f(r.get('gpu_gib'), '.2f')} | {speed} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
