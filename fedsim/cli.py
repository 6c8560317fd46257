"""The ``fedsim`` command: ``fedsim run [overrides]`` and ``fedsim report RUN_DIR...``.

``fedsim run`` is a Hydra app (``-m`` sweeps, ``--cfg job``, tab completion ...); it hands the
composed config to :func:`fedsim.runner.run`.
"""

from __future__ import annotations

import sys

from fedsim.errors import ConfigError, RunStopped

USAGE = """usage: fedsim run [key=value ...] [-m]    run a federation (Hydra overrides; -m sweeps)
       fedsim report RUN_DIR [RUN_DIR ...] [--baseline LABEL]
                                            compare finished runs (mean, 95% CI; paired Δ)
       fedsim study NAME [key=value ...] [--report-only] [--dry-run]
                                            run a study (conf/study/NAME.yaml), cached and
                                            resumable, and write its tables
       fedsim submit [--app DIR] CONNECTION [key=value ...]
                                            flwr run on a SuperLink, failing unless it completed
       fedsim doctor --superlink HOST:9092 --root-certificates CA [--auth-supernode-private-key
              KEY] [--start ...]            why a SuperNode cannot join, in one line

examples:
  fedsim run
  fedsim run dataset=mnist dataset.root=../shared/data model=cnn rounds=50
  fedsim run -m seed=0,1,2
  fedsim run resume=outputs/2026-01-01/12-00-00
  fedsim study weak_supervision seeds=[0,1]
"""


def check_overrides(argv: list[str]) -> None:
    """Compose and validate the config that ``argv`` asks for before Hydra runs anything, so that
    an unknown key or a bad value is one line (a sweep is checked with its first value).

    Raises
    ------
    ConfigError
        On an override Hydra cannot apply, or a value :func:`fedsim.config.validate` refuses.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from fedsim.config import compose, validate

    # Overrides are key=value (or ~key); other tokens are Hydra flags and their values.
    plain = [
        a
        for a in argv
        if not a.startswith("-") and ("=" in a or a.startswith("~")) and not a.startswith("hydra")
    ]
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except HydraException as e:
        raise ConfigError(" ".join(str(e).split())) from None
    first = []
    for o in parsed:
        if o.is_sweep_override():
            value = next(iter(o.sweep_string_iterator()))
            first.append(f"{o.get_key_element()}={value}")
        else:
            first.append(str(o.input_line))
    cfg = compose(first)
    if not cfg.get("resume"):
        validate(cfg)


def _hydra_run(argv: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from fedsim.config import CONF_DIR
    from fedsim.runner import resume_config, run

    failures: list[str] = []
    stopped: list[str] = []

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def _main(cfg: DictConfig) -> float | None:
        OmegaConf.set_struct(cfg, False)
        hc = HydraConfig.get()
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        assert isinstance(resolved, DictConfig)
        cfg = resolved
        cfg.pop("hydra", None)
        try:
            if cfg.get("resume"):
                overrides = OmegaConf.from_dotlist(
                    [o.lstrip("+") for o in hc.overrides.task if not o.startswith("resume=")]
                )
                cfg = resume_config(cfg.resume, overrides)
            else:
                cfg.output_dir = cfg.get("output_dir") or hc.runtime.output_dir
            summary = run(cfg)
        except ConfigError as e:
            print(f"fedsim: error: {e}", file=sys.stderr)
            failures.append(str(e))
            return None
        except RunStopped as e:
            print(f"fedsim: stopped: {e}", file=sys.stderr)
            stopped.append(str(e))
            return None
        acc = summary.get("final_accuracy")
        print(
            f"fedsim: final test accuracy {acc:.4f} after {summary.get('rounds')} rounds "
            f"({summary.get('wall_seconds', 0):.1f}s) -> {cfg.output_dir}"
            if acc is not None
            else f"fedsim: finished -> {cfg.output_dir}",
            flush=True,
        )
        return float(acc) if acc is not None else None

    check_overrides(argv)
    sys.argv = ["fedsim run", *argv]
    _main()
    return 2 if failures else 1 if stopped else 0


def main_study(argv: list[str]) -> int:
    """``fedsim study NAME [key=value ...] [--report-only] [--dry-run]``."""
    flags = {a for a in argv if a.startswith("--")}
    unknown = flags - {"--report-only", "--dry-run"}
    if unknown:
        raise ConfigError(
            f"unknown option {sorted(unknown)[0]!r} of fedsim study: allowed --report-only, "
            "--dry-run"
        )
    rest = [a for a in argv if not a.startswith("--")]
    if not rest:
        raise ConfigError("fedsim study needs a study name: one of conf/study/*.yaml")
    name, overrides = rest[0], rest[1:]
    if "--dry-run" in flags:
        from fedsim.study import load_study, plan
        from fedsim.study.cache import is_done

        runs = plan(load_study(name, overrides))
        done = sum(is_done(r.dir) for r in runs)
        print(f"study {name}: {len(runs)} runs, {done} made, {len(runs) - done} to make")
        return 0
    from fedsim.study import run_and_report

    run_and_report(name, overrides, report_only="--report-only" in flags)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedsim`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    try:
        if command == "run":
            return _hydra_run(rest)
        if command == "report":
            from fedsim.report import main_report

            return main_report(rest)
        if command == "study":
            return main_study(rest)
        if command == "submit":
            from fedsim.deploy import main_submit

            return main_submit(rest)
        if command == "doctor":
            from fedsim.preflight import main_doctor

            return main_doctor(rest)
    except ConfigError as e:
        print(f"fedsim: error: {e}", file=sys.stderr)
        return 2
    print(
        f"fedsim: error: unknown command {command!r}: allowed run, report, study, submit, doctor\n\n{USAGE}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
