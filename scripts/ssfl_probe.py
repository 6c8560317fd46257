"""Diagnostics behind docs/results/ssfl.md (seed 0, Dirichlet 0.1, labels at clients, the table's
budget): is FedAvg+FixMatch's gap to supervised-only due to the unlabeled term or to the weak
augmentation of the labeled batches (flip + crop with 4-pixel padding, which an MLP, not
translation invariant, may not like)?

- ``fixmatch_no_unlabeled``: FixMatch with ``threshold=1.01``: no pseudo-label ever passes, so
  this is the same loop with weakly augmented labeled batches and no unlabeled term;
- ``fixmatch_no_weak_aug``: FixMatch with ``flip=false pad=0``: the weak view is the image itself
  (the spec's ``fixmatch.weak_view: identity``, FedMatch's choice); the strong view is RandAugment.
- ``fedlabel_no_weak_aug``: the same for FedLabel.
- ``semifl_no_mix``: SemiFL without the mix loss (``mix=false``): is the mix loss, whose partner
  labels are the argmax of the received model even where it is not confident, what collapses
  SemiFL to one class when no server set gives it a good first model?

Usage: ``python scripts/ssfl_probe.py`` (writes under outputs/ssfl_probe and prints a table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from ssfl_table import overrides, share_actor_pool  # noqa: E402

from fedsim.config import compose  # noqa: E402

PROBES = {
    "fixmatch_no_unlabeled": ("fixmatch", ["local.threshold=1.01"]),
    "fixmatch_no_weak_aug": ("fixmatch", ["local.flip=false", "local.pad=0"]),
    "fedlabel_no_weak_aug": ("fedlabel", ["local.flip=false", "local.pad=0"]),
    "semifl_no_mix": ("semifl", ["local.mix=false"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--setting", default="labels_at_client")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-train-samples", type=int, default=3000)
    parser.add_argument("--mu", type=int, default=3)
    parser.add_argument("--ra-group", type=int, default=16)
    parser.add_argument("--semifl-epochs", type=int, default=1)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "ssfl_probe"))
    args = parser.parse_args()
    from fedsim.runner import run

    share_actor_pool(compose(["engine.num_cpus=2"]))
    for name in args.probes:
        method, extra = PROBES[name]
        run_dir = (
            Path(args.runs_dir) / f"alpha{args.alpha}" / args.setting / name / f"seed{args.seed}"
        )
        cfg = compose(overrides(args, args.setting, method, args.alpha, args.seed) + extra)
        cfg.output_dir = str(run_dir)
        summary = run(cfg)
        print(f"{name}: final accuracy {100 * summary['final_accuracy']:.2f}", flush=True)


if __name__ == "__main__":
    main()
