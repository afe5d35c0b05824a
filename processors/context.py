"""The record context: what the pipeline knows about the record being processed, in one place.

One ``ContextVar`` holds a :class:`RecordContext` for the record a lane (or a webhook delivery
task) is working on: its coordinates, the W3C ``traceparent`` it arrived with, the attempts
made before this process (the ``x-attempts`` header) and the calls made for it here.  The app
template enters it (:func:`enter`); the resilience layer counts each call (:func:`count_call`)
and reads it for the audit record; the failure route reads how many calls were made
(:func:`calls_for`).  Nothing is passed through module-level globals or several variables.

A context is entered per task: a task started inside a handler sees its parent's context
until it enters its own (asyncio copies the context when it creates a task, and a ``set``
inside the child never reaches the parent).  A lane that waits out a backpressure pause and
runs the same record again keeps the same context, so calls add up across the wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

__all__ = ["RecordContext", "calls_for", "count_call", "current", "enter", "enter_new"]

Coordinates = tuple[str | None, int | None, int | None]
"""(topic, partition, offset) of a record."""


class _Record(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def headers(self) -> Sequence[tuple[str, bytes | str | None]] | None: ...


@dataclass(slots=True)
class RecordContext:
    coordinates: Coordinates | None
    traceparent: str | None = None
    previous_attempts: int = 0
    """Attempts made before this process saw the record (its ``x-attempts`` header)."""
    calls: int = 0
    """External calls made for the record in this process (every in-place retry counts)."""

    @property
    def attempts(self) -> int:
        """What the record's outputs carry as ``x-attempts``: earlier attempts plus this one
        (at least one, also when the handler made no external call)."""
        return self.previous_attempts + max(self.calls, 1)


_CONTEXT: ContextVar[RecordContext | None] = ContextVar("processors_record_context", default=None)


def current() -> RecordContext | None:
    return _CONTEXT.get()


def _header(headers: Sequence[tuple[str, bytes | str | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            if value is None:
                return None
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def enter(record: _Record, *, attempts_header: str = "x-attempts") -> RecordContext:
    """The context of ``record``: the one already entered for it (the same record again after
    a backpressure wait), or a new one read from its headers."""
    coordinates = (record.topic(), record.partition(), record.offset())
    context = _CONTEXT.get()
    if context is not None and context.coordinates == coordinates:
        return context
    headers = record.headers()
    previous = _header(headers, attempts_header)
    context = RecordContext(
        coordinates,
        traceparent=_header(headers, "traceparent"),
        previous_attempts=int(previous) if previous and previous.isdigit() else 0,
    )
    _CONTEXT.set(context)
    return context


def enter_new(*, traceparent: str | None = None, previous_attempts: int = 0) -> RecordContext:
    """A fresh context for work that is not one Kafka record (a webhook delivery's own task)."""
    context = RecordContext(None, traceparent=traceparent, previous_attempts=previous_attempts)
    _CONTEXT.set(context)
    return context


def count_call() -> int:
    """Count one external call for the current record; returns the attempt number it is."""
    context = _CONTEXT.get()
    if context is None:
        context = enter_new()
    context.calls += 1
    return context.previous_attempts + context.calls


def calls_for(record: _Record) -> int:
    """External calls made here for ``record`` (0 when the current context is another record's)."""
    context = _CONTEXT.get()
    coordinates = (record.topic(), record.partition(), record.offset())
    if context is None or context.coordinates != coordinates:
        return 0
    return context.calls
