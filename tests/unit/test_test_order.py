"""The suite's own ordering (tests/conftest.py): the lock-holding tests lead the first slice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import lock_holders_first


@dataclass
class FakeItem:
    name: str
    fixturenames: tuple[str, ...] = field(default_factory=tuple)


def first_slice(ordered: list[Any], workers: int) -> list[Any]:
    """What ``--dist worksteal`` first sends the first worker: ``len // workers`` items."""
    return ordered[: len(ordered) // workers]


def collection() -> list[Any]:
    items: list[Any] = [FakeItem(f"light{i}") for i in range(40)]
    items[30] = FakeItem("fanout", ("one_heavy_at_a_time", "kafka_bootstrap"))
    items[35] = FakeItem("bordereaux-100k", ("one_heavy_at_a_time",))
    items[20] = FakeItem("fault-a", ("kafka_bootstrap",))
    return items


def test_one_worker_keeps_the_collected_order() -> None:
    items = collection()
    assert lock_holders_first(items, 1) == items


@pytest.mark.parametrize("workers", [2, 3])
def test_the_lock_holders_lead_the_first_slice(workers: int) -> None:
    ordered = lock_holders_first(collection(), workers)
    assert [i.name for i in first_slice(ordered, workers)[:2]] == ["fanout", "bordereaux-100k"]


@pytest.mark.parametrize("workers", [2, 3])
def test_every_other_test_keeps_its_collected_order(workers: int) -> None:
    ordered = lock_holders_first(collection(), workers)
    assert sorted(i.name for i in ordered) == sorted(i.name for i in collection())
    rest = [i.name for i in collection() if i.name not in ("fanout", "bordereaux-100k")]
    assert [i.name for i in ordered[2:]] == rest
