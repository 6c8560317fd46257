"""fedsim's Flower ServerApp: it runs the one FL workflow with the components the config turns on
(:mod:`server.components`) and a strategy from ``strategies``.

The same app runs under ``fedsim run`` (simulation) and under ``flwr run`` (deployment); it reads
the whole fedsim config from Flower's run config. In deployment it also writes the resolved
config into the run directory (so ``fedsim report`` and ``resume`` work there too), and a run the
server stops early leaves ``stopped.txt`` with the reason.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from fedsim import constants as C
from fedsim.config import from_run_config
from fedsim.errors import ConfigError, RunStopped
from fedsim.outputs import write_text_atomic
from server.workflow import Workflow

app = ServerApp()


def deployment_config(cfg: DictConfig, run_id: int) -> DictConfig:
    """The config of a ``flwr run`` (composed from its overrides): its run directory defaults to
    ``outputs/flwr-<run id>``; with ``resume=DIR`` it must match DIR's saved config (except the
    keys a resumed run may change)."""
    from fedsim.runner import RESUMABLE_KEYS, resume_config

    if cfg.get("resume"):
        saved = resume_config(Path(cfg.resume), cfg)
        skip = {*RESUMABLE_KEYS, "resume", "output_dir"}
        mine = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in skip}  # type: ignore[union-attr]
        theirs = {k: v for k, v in OmegaConf.to_container(saved).items() if k not in skip}  # type: ignore[union-attr]
        differ = sorted(str(k) for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            raise ConfigError(
                f"cannot resume {cfg.resume!r}: the run config differs from the saved one in "
                f"{differ}; pass the same overrides as the original run plus resume=DIR"
            )
        return saved
    if not cfg.get("output_dir"):
        cfg.output_dir = str(Path("outputs") / f"flwr-{run_id}")
    return cfg


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured workflow."""
    cfg = from_run_config(context.run_config)
    deployed = not context.run_config.get(C.RUN_CONFIG_JSON_KEY)
    if deployed:
        cfg = deployment_config(cfg, context.run_id)
    run_dir = Path(cfg.output_dir).resolve()
    if deployed and not (run_dir / C.CONFIG_FILE).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / C.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / C.STOPPED_FILE).unlink(missing_ok=True)
    try:
        Workflow(cfg, run_dir).run(grid)
    except RunStopped as e:
        write_text_atomic(run_dir / C.STOPPED_FILE, f"{e}\n")
        raise
    if deployed:
        print(f"fedsim: run dir {run_dir}", flush=True)
