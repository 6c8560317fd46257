"""``fedsim submit``: ``flwr run`` made safe for fedsim users.

``flwr run`` (flwr 1.39) has three habits that hurt (see the README, "Deploy to real clients"):

- it installs the app's dependencies with ``uv`` on every run unless
  ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION`` is set (torch, offline hosts: slow or failing);
- it may rewrite ``pyproject.toml`` (it migrates a ``[tool.flwr.federations]`` section out);
- ``flwr run --stream`` can exit 0 when the run failed.

:func:`submit` sets the variable (unless the caller set it), restores ``pyproject.toml`` if it
was changed, streams the run's log, then asks the SuperLink for the run's final status
(``flwr list --run-id ID --format json``) and fails unless it is ``finished:completed``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fedsim.errors import ConfigError

#: The status of a run that completed (``flwr list``).
COMPLETED = "finished:completed"
_RUN_ID = re.compile(r"Successfully started run (\d+)")


def flwr_executable() -> str:
    """The ``flwr`` CLI next to this Python (a venv), else on PATH."""
    here = Path(sys.executable).with_name("flwr")
    if here.exists():
        return str(here)
    found = shutil.which("flwr")
    if found is None:
        raise ConfigError("flwr not found: install fedsim (pip install -e .) in this environment")
    return found


def run_status(connection: str, run_id: int, *, env: dict[str, str] | None = None) -> dict:
    """The SuperLink's record of run ``run_id`` (``flwr list --run-id``), as a dict."""
    out = subprocess.run(
        [flwr_executable(), "list", connection, "--run-id", str(run_id), "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    text = out.stdout[out.stdout.find("{") :] if "{" in out.stdout else ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise RuntimeError(f"flwr list failed: {(out.stdout + out.stderr).strip()}") from None
    runs = data.get("runs") or []
    if not data.get("success") or not runs:
        raise RuntimeError(f"flwr list found no run {run_id}: {text.strip()}")
    return dict(runs[0])


def submit(
    connection: str,
    overrides: list[str],
    *,
    app: Path = Path("."),
    wait_seconds: float = 60.0,
) -> int:
    """Run the fedsim app at ``app`` on the SuperLink ``connection`` with Hydra ``overrides``.

    Parameters
    ----------
    connection
        A SuperLink connection named in ``$FLWR_HOME/config.toml``.
    overrides
        Hydra overrides, as for ``fedsim run`` (for example ``rounds=5 dataset=mnist``).
    app
        The app directory (holding fedsim's ``pyproject.toml``).
    wait_seconds
        How long to wait, once the log stream ended, for the run to reach a final status.

    Returns
    -------
    int
        0 if the run's final status is ``finished:completed``, else 1.
    """
    from fedsim.config import compose, validate

    validate(compose(list(overrides)))  # bad overrides fail here, in one line, before any run
    pyproject = Path(app) / "pyproject.toml"
    if not pyproject.is_file():
        raise ConfigError(f"no pyproject.toml in app directory {str(app)!r}")
    before = pyproject.read_bytes()
    env = dict(os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    run_config = f"overrides={json.dumps(shlex.join(overrides))}"
    cmd = [flwr_executable(), "run", str(app), connection, "--run-config", run_config, "--stream"]
    run_id = None
    try:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                if run_id is None and (m := _RUN_ID.search(line)):
                    run_id = int(m.group(1))
        code = proc.returncode
    finally:
        if pyproject.read_bytes() != before:
            pyproject.write_bytes(before)
            print("fedsim: flwr run changed pyproject.toml; restored it", file=sys.stderr)
    if run_id is None:
        print(f"fedsim: flwr run started no run (exit status {code})", file=sys.stderr)
        return 1
    deadline = time.monotonic() + wait_seconds
    while True:
        status = run_status(connection, run_id, env=env)
        if str(status.get("status", "")).startswith("finished") or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    final = str(status.get("status"))
    if final != COMPLETED:
        details = status.get("status-details", "")
        print(f"fedsim: run {run_id} ended with status {final} ({details})", file=sys.stderr)
        return 1
    print(f"fedsim: run {run_id} {final}", flush=True)
    return 0


def main_submit(argv: list[str]) -> int:
    """``fedsim submit [--app DIR] CONNECTION [OVERRIDES...]``."""
    app = Path(".")
    args = list(argv)
    if args[:1] == ["--app"] and len(args) >= 2:
        app, args = Path(args[1]), args[2:]
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise ConfigError(
            "usage: fedsim submit [--app DIR] CONNECTION [OVERRIDES...] "
            "(CONNECTION: a SuperLink connection of $FLWR_HOME/config.toml)"
        )
    return submit(args[0], args[1:], app=app)
