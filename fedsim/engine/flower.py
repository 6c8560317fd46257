"""``engine=flower``: Flower's stock simulation runtime (Ray backend).

A thin wrapper over flwr 1.39's simulation entry point, so that a later migration stays local.
The public ``run_simulation`` cannot pass a run config to the apps, so this wrapper calls the
internal ``_run_simulation`` with a :class:`~flwr.supercore.run.Run` whose ``override_config``
carries the fedsim config, and an app directory holding just the ``[tool.flwr.app.config]`` keys
(the same keys as the project's pyproject, so the apps read their config the same way under
``flwr run``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fedsim.config import to_run_config
from fedsim.constants import RUN_CONFIG_JSON_KEY, RUN_CONFIG_OVERRIDES_KEY
from fedsim.engine import ENGINES, ray_init_args

_APP_TOML = f"""\
[project]
name = "fedsim-sim"
version = "0.1.0"

[tool.flwr.app]
publisher = "fedsim"

[tool.flwr.app.components]
serverapp = "server.app:app"
clientapp = "clients.app:app"

[tool.flwr.app.config]
{RUN_CONFIG_JSON_KEY} = ""
{RUN_CONFIG_OVERRIDES_KEY} = ""
"""


def backend_config(cfg: DictConfig) -> dict[str, Any]:
    """Flower's Ray backend config from ``cfg.engine``."""
    eng = cfg.engine
    init_args = ray_init_args(eng, verbose=bool(cfg.get("verbose")))
    return {
        "client_resources": {
            "num_cpus": float(eng.client_cpus),
            "num_gpus": float(eng.client_gpus),
        },
        "init_args": init_args,
    }


@ENGINES.register("flower")
def run_flower(cfg: DictConfig, prestarted: None = None) -> None:
    """Run the fedsim apps for ``cfg`` under Flower's simulation runtime."""
    # Import Ray here, in this thread, before Flower starts the ServerApp's thread: Flower
    # imports its Ray backend (and so Ray, about a second) only after that thread started, and
    # the ServerApp's device check (fedsim.config.ray_actor_has_gpu) looks Ray up in
    # sys.modules, where a module being imported by another thread is already listed but only
    # partly initialised ("partially initialized module 'ray' has no attribute
    # 'is_initialized'").
    import ray  # noqa: F401
    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from fedsim.plugins import CLIENT_APP, SERVER_APP, load_object

    client_app = load_object(CLIENT_APP)
    server_app = load_object(SERVER_APP)

    run_config = to_run_config(cfg)
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = dict(run_config)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)
    )
    if not cfg.get("verbose"):
        logging.getLogger("flwr").setLevel(logging.WARNING)
    from fedsim.engine.stop import ENGINE_STOP

    ENGINE_STOP.clear()
    try:
        with tempfile.TemporaryDirectory(prefix="fedsim-app-") as app_dir:
            (Path(app_dir) / "pyproject.toml").write_text(_APP_TOML)
            _run_simulation(
                num_supernodes=int(cfg.num_clients),
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client_app,
                server_app=server_app,
                backend_name="ray",
                backend_config=backend_config(cfg),  # type: ignore[arg-type]
                server_app_context=context,
                app_dir=app_dir,
                is_app=True,
                run=run,
                verbose_logging=bool(cfg.get("verbose")),
            )
    finally:
        ENGINE_STOP.set()
