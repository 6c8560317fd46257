"""Local learners: how a client trains on its own (possibly weak) labels.

Learners are registered by name in :data:`LOCAL` and selected by the Hydra config group ``local``.
"""

from clients.learners import (  # noqa: F401  (register the weak-supervision learners)
    bldr,
    cc,
    coteaching,
    dpc,
    edl,
    fedlabel,
    fixmatch,
    flexmatch,
    gce,
    osal,
    proden,
    rc,
    sce,
    semifl,
    upllrs,
)
from clients.learners import supervised as _supervised  # noqa: F401  (registers "supervised")
from clients.learners.base import LOCAL, ClientData, Learner, TrainResult, build_learner

__all__ = ["LOCAL", "ClientData", "Learner", "TrainResult", "build_learner"]
