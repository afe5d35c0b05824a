"""The suite's own ordering (tests/conftest.py): long tests start first, spread over the workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import long_tests_first


@dataclass
class FakeMarker:
    args: tuple[Any, ...]


@dataclass
class FakeItem:
    name: str
    cost: float = 0.0
    fixturenames: tuple[str, ...] = field(default_factory=tuple)

    def get_closest_marker(self, name: str) -> FakeMarker | None:
        return FakeMarker((self.cost,)) if name == "cost" and self.cost else None


def slices(ordered: list[Any], workers: int) -> list[list[Any]]:
    """What ``--dist worksteal`` first sends each worker: ``remaining // workers_left`` items."""
    out, rest = [], list(ordered)
    for left in range(workers, 0, -1):
        size = len(rest) // left
        out.append(rest[:size])
        rest = rest[size:]
    return out


def collection() -> list[Any]:
    items: list[Any] = [FakeItem(f"light{i}") for i in range(40)]
    items[30] = FakeItem("fanout", 480, ("one_heavy_at_a_time",))
    items[35] = FakeItem("bordereaux-100k", 175, ("one_heavy_at_a_time",))
    items[20] = FakeItem("fault-a", 180)
    items[25] = FakeItem("fault-b", 100)
    items[38] = FakeItem("fuzz", 90)
    return items


def test_one_worker_keeps_the_collected_order() -> None:
    items = collection()
    assert long_tests_first(items, 1) == items


@pytest.mark.parametrize("workers", [2, 3])
def test_every_test_is_kept_once(workers: int) -> None:
    items = collection()
    ordered = long_tests_first(items, workers)
    assert sorted(i.name for i in ordered) == sorted(i.name for i in items)


def test_long_tests_lead_the_slices_and_lock_holders_share_the_first() -> None:
    first, second = slices(long_tests_first(collection(), 2), 2)
    assert [i.name for i in first[:2]] == ["fanout", "bordereaux-100k"]
    # The others, longest first, each to the slice with the least cost so far: the lock holders
    # already weigh 655 s, so all three go to the second slice.
    assert [i.name for i in second[:3]] == ["fault-a", "fault-b", "fuzz"]
    assert all(i.cost == 0 for i in first[2:] + second[3:])
    assert (len(first), len(second)) == (20, 20)


def test_light_tests_keep_their_collected_order() -> None:
    ordered = long_tests_first(collection(), 2)
    light = [i.name for i in ordered if i.cost == 0]
    assert light == [i.name for i in collection() if i.cost == 0]


def test_costs_balance_when_no_test_holds_the_lock() -> None:
    items: list[Any] = [FakeItem(f"light{i}") for i in range(30)]
    items += [FakeItem("a", 100), FakeItem("b", 90), FakeItem("c", 60), FakeItem("d", 40)]
    first, second = slices(long_tests_first(items, 2), 2)
    assert [i.name for i in first if i.cost] == ["a", "d"]
    assert [i.name for i in second if i.cost] == ["b", "c"]
