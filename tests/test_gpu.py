"""GPU paths of the engines (marker ``gpu``: run with ``pytest -m gpu`` on a machine with CUDA).

- ``engine=fast`` trains on the GPU, repeats itself and matches ``engine=flower`` round by round;
- fractional ``client_gpus`` put several actors on one GPU, each holding one CUDA context on one
  device (read from NVML while the federation runs).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from fedsim import constants as C
from fedsim.config import compose
from fedsim.outputs import read_metrics
from fedsim.runner import run

pytestmark = pytest.mark.gpu

TIMING = {C.WALL_SECONDS, C.ROUND_SECONDS, C.TIMESTAMP}
GPU_RUN = [
    "device=cuda",
    "engine.client_gpus=0.25",
    "rounds=3",
    "num_clients=8",
    "clients_per_round=8",
    "checkpoint_every=0",
]


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _metrics(out: Path, engine: str, overrides: list[str]) -> list[dict]:
    cfg = compose(["progress=false", f"engine={engine}", *overrides])
    cfg.output_dir = str(out)
    run(cfg)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(out)]


def test_fast_engine_on_the_gpu_learns_repeats_and_matches_flower(tmp_path: Path) -> None:
    first = _metrics(tmp_path / "fast1", "fast", GPU_RUN)
    again = _metrics(tmp_path / "fast2", "fast", GPU_RUN)
    flower = _metrics(tmp_path / "flower", "flower", GPU_RUN)
    assert len(first) == 3
    assert first[-1][C.EVAL_ACCURACY] > 0.5  # digits, 8 clients, 3 rounds: well above chance
    assert first == again
    assert first == flower


def _gpu_processes(nvml: object) -> set[tuple[int, int]]:
    """(device index, pid) of every process holding a CUDA context now."""
    found = set()
    for i in range(nvml.nvmlDeviceGetCount()):  # type: ignore[attr-defined]
        handle = nvml.nvmlDeviceGetHandleByIndex(i)  # type: ignore[attr-defined]
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):  # type: ignore[attr-defined]
            found.add((i, int(p.pid)))
    return found


def _contexts_during(out: Path, overrides: list[str]) -> set[int]:
    """Run ``engine=fast`` with ``overrides`` and return the pids, other than this process's,
    that NVML listed with a CUDA context meanwhile; asserts that none held one on two devices."""
    nvml = pytest.importorskip("pynvml")
    nvml.nvmlInit()
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(_gpu_processes(nvml))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _metrics(out, "fast", overrides)
    finally:
        stop.set()
        sampler.join()
        nvml.nvmlShutdown()
    if not any(pid == os.getpid() for _, pid in seen):
        pytest.skip(f"NVML lists no process of this one (it evaluates on the GPU): {seen}")
    devices: dict[int, set[int]] = {}
    for dev, pid in seen:
        devices.setdefault(pid, set()).add(dev)
    assert all(len(d) == 1 for d in devices.values()), devices
    return {pid for _, pid in seen if pid != os.getpid()}


def test_fractional_gpus_give_each_actor_one_context_on_one_device(tmp_path: Path) -> None:
    import torch

    # five rounds, so that the actors still loading when round 1 starts join in
    workers = _contexts_during(tmp_path / "fast", [*GPU_RUN, "rounds=5"])
    # 0.25 GPU each: four actors per GPU, one CPU each, at most one per client. Round 1 starts
    # on the first loaded actor, so a short run may end before the last one has a context.
    pool = min(os.cpu_count() or 1, 4 * torch.cuda.device_count(), 8)
    assert 2 <= len(workers) <= pool, (workers, pool)


def test_actors_without_a_gpu_share_train_on_the_cpu(tmp_path: Path) -> None:
    """``device=auto`` with ``client_gpus=0``: the driver evaluates on the GPU, the actors
    (which still see it: Ray leaves their CUDA_VISIBLE_DEVICES alone) stay off it."""
    cpu_actors = ["device=auto", "engine.client_gpus=0", "rounds=2", "num_clients=4"]
    workers = _contexts_during(tmp_path / "fast", [*cpu_actors, "clients_per_round=4"])
    assert workers == set()


def test_gpu_tally_gather_and_device_check_match_the_cpu() -> None:
    import torch

    from clients.learners.base import Tally, same_device
    from fedsim.records import to_host

    cuda = torch.device("cuda")
    here = torch.device("cuda", torch.cuda.current_device())
    assert same_device(here, cuda) and same_device(here, here)
    assert not same_device(torch.device("cpu"), cuda)
    g = torch.Generator().manual_seed(1)
    host = Tally(on_device=False, device=torch.device("cpu"))
    dev = Tally(on_device=True, device=cuda)
    for b in (32, 9):
        loss, logits = torch.rand((), generator=g), torch.randn(b, 10, generator=g)
        y = torch.randint(-1, 10, (b,), generator=g)
        host.add(loss, logits, y, b)
        dev.add(loss.to(cuda), logits.to(cuda), y.to(cuda), b)
    assert dev.totals() == host.totals()
    state = {"w": torch.randn(5, 3, device=cuda), "n": torch.tensor(3, device=cuda)}
    back = to_host(state)
    assert all(back[k].device.type == "cpu" and torch.equal(back[k], state[k].cpu()) for k in state)
