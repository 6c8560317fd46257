"""Shared fixtures: the offline data, and one engine session for the whole test run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.engine.session import EngineSession

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (MNIST, Fashion-MNIST); the test is skipped when it is absent."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"no offline data at {SHARED_DATA} (MNIST in torchvision's layout)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def engine_session() -> Iterator[EngineSession]:
    """The engine session every in-process run of the test run shares (``fedsim.runner.run``
    runs on the open session): Ray, and the ``engine=fast`` actors, start at the first run
    that needs them, not once per run, and restart only when a run asks for other Ray
    settings. A run's metrics do not depend on it (``tests/test_session.py``)."""
    with EngineSession() as session:
        yield session


@pytest.fixture
def no_engine_session(
    engine_session: EngineSession, monkeypatch: pytest.MonkeyPatch
) -> EngineSession:
    """For tests that start and stop Ray themselves: the shared session's Ray and actors are
    stopped first, and no session is open during the test (its next run starts them again)."""
    from fedsim.engine import session

    engine_session.close()
    monkeypatch.setattr(session, "_open_session", None)
    return engine_session
