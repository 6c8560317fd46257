"""The declared top-level schema, ``conf/config.yaml`` and the README's table say the same."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from fedsim.config_schema import FaultsSchema, RunSchema, readme_table
from fedsim.schema import keys_of

ROOT = Path(__file__).resolve().parents[1]


def _conf() -> dict:
    raw = OmegaConf.load(ROOT / "conf" / "config.yaml")
    return OmegaConf.to_container(raw, resolve=False)  # type: ignore[return-value]


def test_config_yaml_defaults_equal_the_schema() -> None:
    conf = _conf()
    for schema, node in ((RunSchema, conf), (FaultsSchema, conf["faults"])):
        for key in keys_of(schema):
            assert key.name in node, f"{key.name} is declared but not in conf/config.yaml"
            assert node[key.name] == key.default, (key.name, node[key.name], key.default)


def test_every_top_level_scalar_is_declared() -> None:
    declared = {k.name for k in keys_of(RunSchema)}
    scalars = {k for k, v in _conf().items() if not isinstance(v, dict | list) and k != "defaults"}
    assert scalars <= declared, f"undeclared top-level keys: {sorted(scalars - declared)}"


def test_the_readme_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- config-table:start -->\n", "\n<!-- config-table:end -->"
    assert start in readme and end in readme
    shown = readme.split(start, 1)[1].split(end, 1)[0]
    assert shown == readme_table(), "regenerate it: python -m fedsim.config_schema"
