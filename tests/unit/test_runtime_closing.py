"""Closing a group consumer: the revocation is served before close(), and a hanging close is left behind."""

from __future__ import annotations

import threading

import pytest

from processors.runtime.closing import close_group_consumer


class FakeConsumer:
    def __init__(self, *, hang: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.assigned = ["insurance.billing.events[0]"]
        self.subscribed = True
        self.hang = hang

    def unsubscribe(self) -> None:
        self.calls.append("unsubscribe")
        self.subscribed = False

    def assignment(self) -> list[str]:
        return self.assigned

    def consume(self, num_messages: int, timeout: float) -> list[object]:
        self.calls.append("consume")
        if not self.subscribed:
            self.assigned = []  # the revocation callback ran here, in consume()
        return []

    def close(self) -> None:
        self.calls.append("close")
        if self.hang is not None:
            self.hang.wait()


def test_the_revocation_is_served_before_close() -> None:
    consumer = FakeConsumer()
    assert close_group_consumer(consumer, what="app payments") is True
    assert consumer.calls == ["unsubscribe", "consume", "close"]


def test_a_close_that_hangs_is_left_behind_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    consumer = FakeConsumer(hang=release)
    try:
        assert close_group_consumer(consumer, what="app payments", timeout_s=0.2) is False
    finally:
        release.set()
    assert "app payments: the consumer did not close within 0 s" in caplog.text
