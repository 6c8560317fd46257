"""``fedsim submit``: ``flwr run`` made safe for fedsim users.

``flwr run`` (flwr 1.39) has three habits that hurt (see the README, "Deploy to real clients"):

- it installs the app's dependencies with ``uv`` on every run unless
  ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION`` is set (torch, offline hosts: slow or failing);
- it may rewrite ``pyproject.toml`` (it migrates a ``[tool.flwr.federations]`` section out);
- ``flwr run --stream`` can exit 0 when the run failed.

Before any of that, :func:`preflight` checks the connection in one line each (the SuperLink's
Control API reachable, its certificate trusted and naming the address dialed, enough SuperNodes
online for ``num_clients``), so a run is never started that cannot finish.

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
from fedsim.preflight import PreflightError, check_reachable, check_tls, split_address

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


def flwr_home() -> Path:
    """``$FLWR_HOME``, else ``~/.flwr`` (where ``flwr`` keeps ``config.toml``)."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def connection_settings(connection: str) -> dict:
    """The ``[superlink.CONNECTION]`` table of ``$FLWR_HOME/config.toml``.

    Raises
    ------
    ConfigError
        When the file or the connection is missing.
    """
    import tomllib

    path = flwr_home() / "config.toml"
    try:
        tables = tomllib.loads(path.read_text()).get("superlink", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read the flwr connections in {path}: {e}") from None
    known = sorted(k for k, v in tables.items() if isinstance(v, dict))
    if connection not in known:
        raise ConfigError(
            f"unknown SuperLink connection {connection!r} in {path}: allowed {known or 'none'}"
        )
    return dict(tables[connection])


def online_nodes(connection: str, *, env: dict[str, str] | None = None) -> int:
    """How many SuperNodes the SuperLink counts online (``flwr supernode list``)."""
    out = subprocess.run(
        [flwr_executable(), "supernode", "list", connection, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    try:
        data = json.loads(out.stdout[out.stdout.find("{") :])
    except json.JSONDecodeError:
        raise PreflightError(
            f"flwr supernode list {connection} failed: {' '.join(out.stderr.split())[:300]}"
        ) from None
    if not data.get("success"):
        raise PreflightError(f"flwr supernode list {connection}: {data.get('error-message')}")
    return sum(1 for node in data.get("nodes", []) if node.get("status") == "online")


def preflight(
    connection: str, num_clients: int, *, wait_seconds: float = 30.0, env: dict | None = None
) -> str:
    """Check that a run on ``connection`` can start; the success line, or one-line errors.

    Parameters
    ----------
    connection
        A connection of ``$FLWR_HOME/config.toml``.
    num_clients
        The SuperNodes the run needs (each holds one partition).
    wait_seconds
        How long to wait for that many SuperNodes to be online.

    Raises
    ------
    ConfigError
        When the connection is unknown or its CA file is missing.
    PreflightError
        When the Control API is unreachable or its certificate fails, or too few nodes are online.
    """
    settings = connection_settings(connection)
    address = str(settings.get("address", ""))
    host, port = split_address(address)
    check_reachable(host, port)
    if not settings.get("insecure"):
        ca = settings.get("root-certificates")
        if not ca:
            raise ConfigError(
                f"connection {connection!r} has neither root-certificates nor insecure = true"
            )
        check_tls(host, port, Path(str(ca)))
    deadline = time.monotonic() + wait_seconds
    while (online := online_nodes(connection, env=env)) < num_clients:
        if time.monotonic() > deadline:
            raise PreflightError(
                f"only {online} of the {num_clients} SuperNodes the run needs (num_clients) are "
                f"online at {address} after {wait_seconds:g} s; on each missing node run "
                "`fedsim doctor --superlink HOST:9092 --root-certificates ca.crt "
                "--auth-supernode-private-key KEY` to see why"
            )
        time.sleep(1.0)
    return f"{online} SuperNodes online at {address}"


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
    node_wait_seconds: float | None = 30.0,
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
    node_wait_seconds
        How long :func:`preflight` waits for ``num_clients`` SuperNodes; None skips the preflight.

    Returns
    -------
    int
        0 if the run's final status is ``finished:completed``, else 1.
    """
    from fedsim.config import compose, validate

    cfg = compose(list(overrides))
    validate(cfg)  # bad overrides fail here, in one line, before any run
    pyproject = Path(app) / "pyproject.toml"
    if not pyproject.is_file():
        raise ConfigError(f"no pyproject.toml in app directory {str(app)!r}")
    env = dict(os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    if node_wait_seconds is not None:
        try:
            ready = preflight(
                connection, int(cfg.num_clients), wait_seconds=node_wait_seconds, env=env
            )
        except PreflightError as e:
            print(f"fedsim submit: {e}", file=sys.stderr, flush=True)
            return 1
        print(f"fedsim submit: preflight ok: {ready}", flush=True)
    before = pyproject.read_bytes()
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


SUBMIT_USAGE = (
    "usage: fedsim submit [--app DIR] [--wait-nodes SECONDS | --no-preflight] CONNECTION "
    "[OVERRIDES...] (CONNECTION: a SuperLink connection of $FLWR_HOME/config.toml)"
)


def main_submit(argv: list[str]) -> int:
    """``fedsim submit [--app DIR] [--wait-nodes S | --no-preflight] CONNECTION [OVERRIDES...]``."""
    app = Path(".")
    node_wait: float | None = 30.0
    args = list(argv)
    while args and args[0] in ("--app", "--wait-nodes", "--no-preflight"):
        flag = args.pop(0)
        if flag == "--no-preflight":
            node_wait = None
            continue
        if not args:
            raise ConfigError(f"{flag} needs a value ({SUBMIT_USAGE})")
        value = args.pop(0)
        if flag == "--app":
            app = Path(value)
            continue
        try:
            node_wait = float(value)
        except ValueError:
            node_wait = -1.0
        if not node_wait >= 0:
            raise ConfigError(f"invalid --wait-nodes={value!r}: allowed a number of seconds >= 0")
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise ConfigError(SUBMIT_USAGE)
    return submit(args[0], args[1:], app=app, node_wait_seconds=node_wait)
