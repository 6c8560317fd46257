"""Deployment config handling without a SuperLink: run directories, resume checks, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedsim import constants as C
from fedsim.cli import main
from fedsim.config import compose
from fedsim.errors import ConfigError
from server.app import deployment_config


def test_deployed_run_dir_defaults_to_the_flower_run_id() -> None:
    cfg = deployment_config(compose(["rounds=3"]), run_id=42)
    assert cfg.output_dir == str(Path("outputs") / "flwr-42")


def test_deployed_resume_needs_the_original_overrides(tmp_path: Path) -> None:
    saved = compose(["rounds=3", "seed=5"])
    saved.output_dir = str(tmp_path)
    (tmp_path / C.CONFIG_FILE).write_text(OmegaConf.to_yaml(saved))
    same = deployment_config(compose(["rounds=6", "seed=5", f"resume={tmp_path}"]), run_id=1)
    assert same.rounds == 6 and same.seed == 5 and same.output_dir == str(tmp_path)
    with pytest.raises(ConfigError, match=r"differs from the saved one in \['seed'\]"):
        deployment_config(compose(["seed=6", f"resume={tmp_path}"]), run_id=1)


def test_submit_refuses_bad_input_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit"]) == 2
    assert "usage: fedsim submit" in capsys.readouterr().err
    assert main(["submit", "lab", "partition.alpha=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedsim: error: invalid partition.alpha=0: allowed a number > 0"]
