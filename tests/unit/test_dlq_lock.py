"""The replay lock's bookkeeping, without a broker (the broker side is in the integration tests)."""

from __future__ import annotations

import pytest

from processors.dlq import ReplayLock, ReplayLockLost


def test_a_lock_is_free_until_acquired_and_constructing_it_touches_no_network() -> None:
    lock = ReplayLock("127.0.0.1:1", "integrations.payments.dlq", operator="alice")
    assert not lock.held
    assert lock.group == "processors-dlq-replay-lock.integrations.payments.dlq"
    assert "free" in repr(lock)
    lock.ensure_held()  # nothing was lost
    lock.release()  # idempotent, and harmless before acquire


def test_a_lost_session_makes_the_holder_stop() -> None:
    lock = ReplayLock("127.0.0.1:1", "integrations.payments.dlq", operator="alice")
    lock._on_lost(None, [])
    with pytest.raises(ReplayLockLost, match="run the same command again"):
        lock.ensure_held()
