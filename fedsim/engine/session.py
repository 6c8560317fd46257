"""Engine sessions: start the engine once and run many configs on it.

A research script or a test suite that runs many federations pays Ray's start-up (seconds) and,
with ``engine=fast``, the start of the actors (each imports PyTorch and Flower: seconds more)
once per session instead of once per run::

    from fedsim.config import compose
    from fedsim.engine import EngineSession

    with EngineSession() as session:
        for seed in range(3):
            cfg = compose([f"seed={seed}", f"output_dir=outputs/seed{seed}"])
            summary = session.run(cfg)

:func:`fedsim.runner.run` runs on the session that is open in the process (the one entered with
``with``), and opens a one-run session when there is none, so both paths are the same code. A run
on a session gives the metrics it gives alone: the actors keep nothing of a run beyond caches
keyed by its config (each run loads its config and builds its client runtime afresh; client
contexts live in the driver).

Ray allows one driver connection per process, so at most one session is open per process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from fedsim.errors import ConfigError

log = logging.getLogger("fedsim")

#: Engine keys that say how Ray starts (``conf/engine/*.yaml``). Those that change only how fast
#: Ray starts or moves results are in :data:`SPEED_KEYS`.
RAY_KEYS = ("ray_address", "num_cpus", "num_gpus", "lean_ray", "lean_agents", "inline_bytes")
SPEED_KEYS = frozenset({"lean_ray", "lean_agents", "inline_bytes"})

_open_session: EngineSession | None = None


def open_session() -> EngineSession | None:
    """The session open in this process (entered with ``with``), or None."""
    return _open_session


def ray_settings(engine: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of :data:`RAY_KEYS` that ``engine`` (an ``engine`` config block) sets."""
    return {key: engine[key] for key in RAY_KEYS if key in engine}


def ray_mismatch(
    want: Mapping[str, Any], have: Mapping[str, Any], *, speed_too: bool
) -> str | None:
    """Why a Ray started with ``have`` cannot serve a run asking for ``want``, or None.

    ``have`` holds the settings Ray was started with, plus ``"CPU"`` and ``"GPU"``: the totals
    Ray reports. A run's ``num_cpus``/``num_gpus`` are met when Ray has that many in total
    (null: any); on a joined cluster (``ray_address``) they do not apply, as in
    :func:`fedsim.engine.ray_init_args`. The keys of :data:`SPEED_KEYS` count only with
    ``speed_too``.

    >>> ray_mismatch({"num_cpus": 2}, {"CPU": 2.0, "GPU": 0.0}, speed_too=True) is None
    True
    >>> ray_mismatch({"num_cpus": 1}, {"CPU": 2.0, "GPU": 0.0}, speed_too=True)
    'engine.num_cpus=1, but the Ray of this session has 2 CPUs'
    """
    address = want.get("ray_address") or None
    if address != (have.get("ray_address") or None):
        return (
            f"engine.ray_address={address!r}, but this session runs on {have.get('ray_address')!r}"
        )
    if address is None:
        for key, total in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            n = want.get(key)
            if n is not None and float(n) != float(have.get(total, 0.0)):
                return (
                    f"engine.{key}={n}, but the Ray of this session has "
                    f"{have.get(total, 0.0):g} {total}s"
                )
        if speed_too:
            for key in sorted(SPEED_KEYS & set(want)):
                if key in have and want[key] != have[key]:
                    return f"engine.{key}={want[key]!r}, but this session's Ray has {have[key]!r}"
    return None


class EngineSession:
    """Ray (started or joined) and the ``engine=fast`` actors, shared by the runs given to
    :meth:`run`.

    Parameters
    ----------
    engine
        An ``engine`` config block (``cfg.engine``) whose Ray settings (:data:`RAY_KEYS`) the
        session starts Ray with; a run whose ``ray_address``, ``num_cpus`` or ``num_gpus``
        Ray cannot meet is refused with a :class:`~fedsim.errors.ConfigError` (the
        :data:`SPEED_KEYS` are the session's). None: Ray starts at the first run, with its
        settings, and restarts when a later run asks for other ones (a different Ray,
        or a different speed setting).
    verbose
        Ray's own logging at INFO (else WARNING), as the ``verbose`` config key.

    Notes
    -----
    Nothing starts in the constructor: :meth:`start` (or ``with``) does. If Ray was already
    initialised in this process, the session runs on it and leaves it running. ``engine=fast``
    actors are kept between runs while the runs' ``client_cpus`` and ``client_gpus`` stay the
    same; after a run that failed or left calls in flight they are replaced. Before an
    ``engine=flower`` run they are stopped, as Flower starts its own actors.
    """

    def __init__(self, engine: Mapping[str, Any] | None = None, *, verbose: bool = False) -> None:
        self._fixed = None if engine is None else _plain(engine)
        self.verbose = verbose
        self._ray: dict[str, Any] | None = None  # the running Ray's settings and totals
        self._owns_ray = False
        self._pool: Any = None  # fedsim.engine.fast.ActorPool
        self.ray_starts = 0  #: Ray starts (or joins) by this session so far
        self.runs = 0  #: runs begun on this session so far

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> EngineSession:
        """Start (or join) Ray now if the session has fixed settings; return the session."""
        if self._fixed is not None and self._ray is None:
            self._start_ray(self._fixed)
        return self

    def close(self) -> None:
        """Stop the actors, and Ray if this session started it (idempotent; a later run
        starts them again)."""
        self._close_pool()
        if self._ray is not None:
            ray_was_ours, self._ray = self._owns_ray, None
            self._owns_ray = False
            if ray_was_ours:
                from fedsim.engine import localray

                localray.stop_ray()

    def __enter__(self) -> EngineSession:
        global _open_session
        if _open_session is not None:
            raise RuntimeError(
                "an engine session is already open in this process (one per process)"
            )
        _open_session = self
        try:
            return self.start()
        except BaseException:
            _open_session = None
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _open_session
        try:
            self.close()
        finally:
            if _open_session is self:
                _open_session = None

    # -- runs -----------------------------------------------------------------------------------------
    def run(self, cfg: Any) -> dict[str, Any]:
        """Run the federation ``cfg`` (a composed config with ``output_dir``) on this session;
        return its summary, as :func:`fedsim.runner.run` does."""
        from fedsim.runner import run

        return run(cfg, session=self)

    def begin(self, cfg: Any) -> Any:
        """Make the engine ready for ``cfg`` (for :func:`fedsim.runner.run`): Ray up with fitting
        settings and, for ``engine=fast``, the run's actors created (not awaited, so that
        they import their libraries while the driver loads the data).

        Returns
        -------
        The handle the engine takes as ``prestarted`` (None for ``engine=flower``); give it to
        :meth:`end` when the run ends.

        Raises
        ------
        ConfigError
            If Ray of a session with fixed settings cannot serve ``cfg.engine``, or no Ray node
            can host one client.
        """
        engine = _plain(cfg.engine)
        self._ensure_ray(engine)
        self.runs += 1
        if str(engine["name"]) != "fast":
            self._close_pool()
            return None
        from fedsim.engine import fast

        cpus, gpus = float(engine["client_cpus"]), float(engine["client_gpus"])
        if self._pool is not None and not self._pool.fits(cpus, gpus):
            self._close_pool()
        if self._pool is None:
            self._pool = fast.ActorPool(cpus, gpus)
        try:
            return fast.FastRun(self._pool.take(int(cfg.num_clients)))
        except BaseException:
            self._close_pool()
            raise

    def end(self, handle: Any, *, failed: bool) -> None:
        """After a run begun with :meth:`begin`: keep the actors if the run ended cleanly and
        they all still answer, else stop them (a later run starts new ones)."""
        import ray

        from fedsim.engine import localray

        if self._ray is not None and not ray.is_initialized():
            # Flower's Ray backend calls ray.shutdown() when its run ends: a lean node is still
            # up (connect again), anything else is gone or left (start or join it again).
            if self._owns_ray and localray.reattach(verbose=self.verbose):
                return
            self._pool = None
            self.close()
            return
        if self._pool is None or handle is None:
            return
        if failed or not handle.reusable or not self._pool.answers():
            self._close_pool()

    # -- internals ----------------------------------------------------------------------------------
    def _ensure_ray(self, engine: dict[str, Any]) -> None:
        if self._ray is not None:
            why = ray_mismatch(ray_settings(engine), self._ray, speed_too=self._fixed is None)
            if why is None:
                return
            if self._fixed is not None or not self._owns_ray:
                raise ConfigError(f"cannot run on this engine session: {why}")
            log.info("fedsim: restarting the session's Ray (%s)", why)
            self.close()
        self._start_ray(engine if self._fixed is None else self._fixed)

    def _start_ray(self, engine: dict[str, Any]) -> None:
        import ray

        from fedsim.engine import localray

        log_to_driver = None if str(engine.get("name")) == "fast" else self.verbose
        self._owns_ray = localray.start_ray(
            engine, verbose=self.verbose, log_to_driver=log_to_driver
        )
        self.ray_starts += int(self._owns_ray)
        totals = ray.cluster_resources()
        self._ray = {
            **ray_settings(engine),
            "CPU": float(totals.get("CPU", 0.0)),
            "GPU": float(totals.get("GPU", 0.0)),
        }
        if not self._owns_ray:  # someone else's Ray: whatever it is, runs may use it
            self._ray["ray_address"] = engine.get("ray_address")

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _plain(engine: Mapping[str, Any]) -> dict[str, Any]:
    """``engine`` as a plain dict (an OmegaConf node resolved)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(engine, DictConfig):
        out = OmegaConf.to_container(engine, resolve=True)
        assert isinstance(out, dict)
        return {str(k): v for k, v in out.items()}
    return dict(engine)
