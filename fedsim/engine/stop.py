"""The engines' stop signal, shared with the ServerApp's message exchange."""

from __future__ import annotations

import threading

#: Set by a simulation engine when it stops (normally or on failure): a ServerApp thread that is
#: still waiting for replies then ends instead of blocking the process until its timeout.
ENGINE_STOP = threading.Event()
