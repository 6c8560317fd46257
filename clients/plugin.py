"""The ``clients`` plugin: importing it registers the learners, query strategies and attacks into
:mod:`fedsim.registries`, and their whole-config checks.

It is named by the ``fedsim.plugins`` entry-point group (``pyproject.toml``) and imported by
:func:`fedsim.plugins.load_plugins`.
"""

from __future__ import annotations

from clients import attacks as _attacks  # noqa: F401  (registers the attacks)
from clients import learners as _learners  # noqa: F401  (registers the learners)
from clients import query as _query  # noqa: F401  (registers the query strategies)
from clients.learners.base import check_local_config
from clients.learners.vectorized import check_vectorize_data
from fedsim.registries import config_check, data_check

config_check("local")(check_local_config)
data_check("vectorize")(check_vectorize_data)
