"""The record context: one place for a record's calls, attempts and trace context."""

from __future__ import annotations

import asyncio

from processors import context as record_context
from processors.runtime.message import StaticMessage

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _msg(offset: int, headers: tuple[tuple[str, bytes | None], ...] = ()) -> StaticMessage:
    return StaticMessage("t", 0, offset, b"k", b"v", headers)


def test_a_record_reads_its_trace_context_and_earlier_attempts() -> None:
    async def run() -> record_context.RecordContext:
        msg = _msg(1, (("traceparent", TRACEPARENT.encode()), ("x-attempts", b"3")))
        return record_context.enter(msg)

    context = asyncio.run(run())
    assert context.traceparent == TRACEPARENT
    assert context.previous_attempts == 3
    assert context.attempts == 4  # a handler that made no call still counts one attempt


def test_calls_add_up_across_a_backpressure_wait_of_the_same_record() -> None:
    async def run() -> tuple[int, int, int]:
        msg = _msg(7)
        record_context.enter(msg)
        record_context.count_call()
        again = record_context.enter(msg)  # the lane runs the same record after the wait
        record_context.count_call()
        other = _msg(8)
        before_other = record_context.calls_for(msg)
        record_context.enter(other)
        return again.calls, before_other, record_context.calls_for(msg)

    assert asyncio.run(run()) == (2, 2, 0)


def test_a_child_task_entering_its_own_context_leaves_the_parents_alone() -> None:
    async def run() -> tuple[int, int]:
        parent = record_context.enter(_msg(1, (("x-attempts", b"1"),)))

        async def delivery() -> int:
            record_context.enter_new(previous_attempts=5)
            return record_context.count_call()

        child_attempt = await asyncio.create_task(delivery())
        return child_attempt, parent.calls

    assert asyncio.run(run()) == (6, 0)


def test_a_call_outside_any_record_is_counted_in_a_context_of_its_own() -> None:
    async def run() -> int:
        return record_context.count_call()

    assert asyncio.run(run()) == 1
