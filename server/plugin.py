"""The ``server`` plugin: importing it registers the post-training defenses into
:data:`fedsim.registries.DEFENSES`, and the checks of the attack, defense and ``backdoor_eval``
groups and of federated active learning (``query``, ``fal``).

It is named by the ``fedsim.plugins`` entry-point group (``pyproject.toml``) and imported by
:func:`fedsim.plugins.load_plugins`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from fedsim.registries import config_check, data_check
from server import defenses as _defenses  # noqa: F401  (registers the defenses)
from server import study_reports_backdoor as _study_reports_backdoor  # noqa: F401  (report sections)
from server import study_reports_fal as _study_reports_fal  # noqa: F401  (report sections)
from server import study_reports_osal as _study_reports_osal  # noqa: F401  (report sections)
from server.backdoor_eval import check_attack_data, check_backdoor_config
from server.fal_math import validate_fal

config_check("backdoor")(check_backdoor_config)
config_check("fal")(validate_fal)


@data_check("attack")
def check_attack_on_data(cfg: DictConfig, data: Any) -> None:
    """The attack's labels and trigger against the loaded dataset."""
    check_attack_data(cfg, data.num_classes, data.image_size)


@config_check("components")
def check_workflow_components(cfg: DictConfig) -> None:
    """Each workflow component's own checks and refused combinations (server.components)."""
    from server.components import check_components

    check_components(cfg)


@data_check("components")
def check_components_on_data(cfg: DictConfig, data: Any) -> None:
    """Each active component's checks against the loaded data and the partition."""
    from fedsim.federation import build_federation
    from server.components import check_components_data

    check_components_data(cfg, build_federation(cfg))
