"""fedsim's Flower ServerApp: it runs the FL workflow with a strategy from ``strategies``.

The same app runs under ``fedsim run`` (simulation) and under ``flwr run`` (deployment); it reads
the whole fedsim config from Flower's run config.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.config import from_run_config
from server.workflow import FLWorkflow

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured workflow."""
    cfg = from_run_config(context.run_config)
    run_dir = Path(cfg.output_dir) if cfg.get("output_dir") else Path("outputs") / "flwr-run"
    from server.ssfl import SSFLWorkflow, uses_ssfl

    workflow = SSFLWorkflow if uses_ssfl(cfg) else FLWorkflow
    workflow(cfg, run_dir).run(grid)
