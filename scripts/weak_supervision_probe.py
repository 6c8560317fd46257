"""Diagnostics behind docs/results/weak_supervision.md (one seed, the table's settings).

- ``fixmatch_no_unlabeled``: FixMatch with ``threshold=1.01``, so no pseudo-label ever passes: the
  same loop, the same weakly augmented labeled batches, and no unlabeled term. It separates the
  effect of the weak augmentation on the supervised part from that of the unlabeled term.
- ``fixmatch_no_unlabeled_no_augment``: the same without flip and crop: only the loop's extra
  passes over the labeled samples (it cycles them to match one pass over the unlabeled set)
  remain.
- ``pseudo-labels``: with the final global model of a finished FixMatch/FlexMatch/CE run, the
  fraction of each client's unlabeled samples whose weak-view confidence passes 0.95, and the
  accuracy of those pseudo-labels against the true labels.

Usage: ``python scripts/weak_supervision_probe.py [--seed 0]`` (after the table's runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402

from fedsim.config import compose  # noqa: E402


def pseudo_label_quality(run_dir: Path, tau: float = 0.95) -> dict[str, float]:
    """Pass rate and accuracy of the final model's confident weak-view predictions on the
    clients' unlabeled samples."""
    from omegaconf import OmegaConf

    from clients.learners.common import weak_augment
    from fedsim.checkpoint import latest_checkpoint, load_checkpoint
    from fedsim.data import to_float
    from fedsim.federation import build_federation
    from fedsim.models import build_model

    cfg = OmegaConf.load(run_dir / "config.yaml")
    fed = build_federation(cfg)
    model = build_model(
        str(cfg.model.name),
        num_classes=fed.data.num_classes,
        in_channels=fed.data.in_channels,
        image_size=fed.data.image_size,
        params=dict(cfg.model.get("params") or {}),
    )
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    model.load_state_dict({k: torch.as_tensor(v) for k, v in ckpt["arrays"].items()})
    model.eval()
    torch.manual_seed(0)
    flip, pad = cfg.local.get("flip", True), cfg.local.get("pad", 4)  # CE runs: FixMatch's default
    passed = correct = total = 0
    for pid in range(int(cfg.num_clients)):
        d = fed.client_data(pid)
        unl = d.unlabeled_indices()
        true = fed.data.train_y[torch.from_numpy(fed.partitions[pid])][unl]
        with torch.no_grad():
            view = weak_augment(d.x[unl], flip=bool(flip), pad=int(pad))  # the run's weak view
            x = to_float(view, d.mean, d.std)
            conf, pred = torch.softmax(model(x), 1).max(1)
        ok = conf >= tau
        passed += int(ok.sum())
        correct += int((pred[ok] == true[ok]).sum())
        total += int(unl.numel())
    return {"pass_rate": passed / max(total, 1), "pseudo_accuracy": correct / max(passed, 1)}


def main() -> None:
    from weak_supervision_table import overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "weak_supervision_table"))
    parser.add_argument("--skip-runs", action="store_true")
    args = parser.parse_args()
    table_args = argparse.Namespace(
        rounds=20,
        epochs=2,
        max_train_samples=6000,
        mu=3,
        ra_group=4,
        data_root=str(REPO.parent / "shared" / "data"),
    )
    out: dict[str, object] = {}
    probes = {
        "fixmatch_no_unlabeled": ["local.threshold=1.01"],
        "fixmatch_no_unlabeled_no_augment": [
            "local.threshold=1.01",
            "local.flip=false",
            "local.pad=0",
        ],
    }
    for name, extra in probes.items():
        run_dir = Path(args.runs_dir) / "probe" / name / f"seed{args.seed}"
        if not args.skip_runs and not (run_dir / "summary.json").is_file():
            from fedsim.runner import run

            cfg = compose([*overrides(table_args, "semi5", "fixmatch", args.seed), *extra])
            cfg.output_dir = str(run_dir)
            run(cfg)
        if (run_dir / "summary.json").is_file():
            out[name] = json.loads((run_dir / "summary.json").read_text())
    for method in ("supervised", "fixmatch", "flexmatch", "fixmatch_identity"):
        d = Path(args.runs_dir) / "semi5" / method / f"seed{args.seed}"
        if (d / "summary.json").is_file():
            out[f"pseudo_labels_{method}"] = pseudo_label_quality(d)
    print(json.dumps(out, indent=1))
    (Path(args.runs_dir) / "probe").mkdir(parents=True, exist_ok=True)
    (Path(args.runs_dir) / "probe" / f"probe_seed{args.seed}.json").write_text(
        json.dumps(out, indent=1)
    )


if __name__ == "__main__":
    main()
