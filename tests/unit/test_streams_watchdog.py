"""The transactional loop's watchdog: a transaction call that never returns stops the process."""

from __future__ import annotations

import threading

import pytest

from processors.streams import loop as loop_module
from processors.streams.loop import TransactionalLoop


def _loop(on_stuck: object) -> TransactionalLoop:
    return TransactionalLoop(
        app="bordereaux",
        stages=[],
        consumer_conf={"group.id": "g", "bootstrap.servers": "b:9092"},
        producer_conf={"transactional.id": "t", "bootstrap.servers": "b:9092"},
        dlq_topic="dlq",
        transaction_timeout_s=0.1,
        on_stuck=on_stuck,  # type: ignore[arg-type]
    )


def test_a_transaction_call_blocked_past_its_timeout_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_module, "STUCK_AFTER_S", 0.1)
    stuck: list[str] = []
    reported = threading.Event()

    def on_stuck(what: str) -> None:
        stuck.append(what)
        reported.set()

    txn = _loop(on_stuck)
    release = threading.Event()
    stop = threading.Event()
    call = threading.Thread(target=txn._watched, args=("send_offsets_to_transaction", release.wait))
    watchdog = threading.Thread(target=txn._watch, args=(stop,))
    call.start()
    watchdog.start()
    try:
        assert reported.wait(30), "the watchdog did not report the blocked call"
    finally:
        release.set()
        stop.set()
        call.join(10)
        watchdog.join(10)
    assert stuck == ["send_offsets_to_transaction"]


def test_calls_that_return_in_time_are_never_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_module, "STUCK_AFTER_S", 0.1)
    stuck: list[str] = []
    txn = _loop(stuck.append)
    stop = threading.Event()
    watchdog = threading.Thread(target=txn._watch, args=(stop,))
    watchdog.start()
    try:
        for _ in range(3):
            assert txn._watched("commit_transaction", lambda: 42) == 42
        # the watchdog looks once a second: let it look at least once with no call running
        assert not stop.wait(1.2)
    finally:
        stop.set()
        watchdog.join(10)
    assert stuck == []
