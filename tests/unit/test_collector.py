"""The collector's thresholds while processors run (``collector_tuned``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from processors.runtime.collector import THRESHOLDS, collector_tuned


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_thresholds_are_raised_while_held_and_put_back_after() -> None:
    with collector_tuned():
        assert gc.get_threshold() == THRESHOLDS
    assert gc.get_threshold() == (700, 10, 10)


def test_nested_holders_keep_them_raised_until_the_last_leaves() -> None:
    outer = collector_tuned()
    inner = collector_tuned()
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # the first holder leaves first: the other still runs
    assert gc.get_threshold() == THRESHOLDS
    inner.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_higher_thresholds_set_by_the_operator_are_left_alone() -> None:
    gc.set_threshold(200_000, 50, 200)
    with collector_tuned():
        assert gc.get_threshold() == (200_000, 50, 200)
    assert gc.get_threshold() == (200_000, 50, 200)


def test_they_are_put_back_when_the_processor_fails() -> None:
    with pytest.raises(RuntimeError), collector_tuned():
        raise RuntimeError("the runner stopped with an error")
    assert gc.get_threshold() == (700, 10, 10)


def test_collections_still_happen_under_them() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the collector frees it

    with collector_tuned():
        collected = gc.get_stats()[0]["collections"]
        for _ in range(THRESHOLDS[0] * 2):
            Node()
        assert gc.get_stats()[0]["collections"] > collected
