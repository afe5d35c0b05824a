"""Liveness, readiness and the per-app, per-endpoint status behind ``/readyz``, ``/api/v1/status``
and ``/metrics``.

* **Ready** iff every engine has had its first partition assignment (an instance with no
  partition, because the group has more members than partitions, is still ready) and a broker
  metadata request succeeds.  The metadata request runs on a thread of its own with a short
  timeout and its answer is reused for ``cache_s`` seconds, so probes never pile up on the
  broker.
* **Per app**: consumer group, assigned partitions, processed / failed / produced counts,
  rebalances, backpressure pauses and the time of the last success (from ``Engine.stats``);
  the records waiting in each retry tier (from the lag the consumer already reports), the
  Kafka transactions of an exactly-once app, and how late a reporting app closes its periods.
* **Per endpoint**: the circuit breaker's state and counters, the times of its last success and
  last failure, and the error rate (failures / calls that reached the endpoint; refusals by an
  open breaker are counted apart) over a sliding window of about ``window_s`` seconds, computed
  from samples of the breaker's totals taken every ``sample_interval_s`` and on every read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from processors.kafka import KafkaClients
from processors.resilience.breaker import BreakerRegistry, BreakerState, BreakerStats
from processors.runtime.engine import EngineStats
from processors.topics.durations import format_duration

__all__ = [
    "AppStatus",
    "BrokerCheck",
    "BrokerProbe",
    "EndpointStatus",
    "EngineView",
    "ErrorRateWindow",
    "HealthMonitor",
    "LoopView",
    "Readiness",
    "iso_utc",
]

log = logging.getLogger(__name__)

TP = tuple[str, int]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class EngineView(Protocol):
    """What health reads from an :class:`~processors.runtime.engine.Engine`."""

    @property
    def processor(self) -> _Named: ...
    @property
    def group(self) -> str: ...
    @property
    def stats(self) -> EngineStats: ...
    @property
    def assigned(self) -> list[TP]: ...
    async def wait_assigned(self) -> None: ...


class _LoopStats(Protocol):
    records: int
    aborts: int
    dead_letters: int
    failures: dict[tuple[str, str], int]
    outputs: int
    rebalances: int
    transactions: int
    last_commit_at: float | None
    assigned: list[TP]
    lag: dict[TP, int]


class _Loop(Protocol):
    @property
    def app(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def stats(self) -> _LoopStats: ...
    @property
    def ready(self) -> threading.Event: ...
    def when_ready(self, callback: Callable[[], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class _AppName:
    name: str


class LoopView:
    """An exactly-once :class:`~processors.streams.loop.TransactionalLoop` (which runs in a thread
    of its own) as health sees an engine: ready once its first assignment is restored; records,
    dead letters, outputs, rebalances and the time of its last committed transaction."""

    def __init__(self, loop: _Loop) -> None:
        self._loop = loop
        self.processor = _AppName(loop.app)

    @property
    def group(self) -> str:
        return self._loop.group

    @property
    def assigned(self) -> list[TP]:
        return list(self._loop.stats.assigned)

    @property
    def stats(self) -> EngineStats:
        s = self._loop.stats
        return EngineStats(
            processed=s.records,
            failed=s.dead_letters,
            outputs=s.outputs,
            rebalances=s.rebalances,
            commits=s.transactions,
            last_success_at=s.last_commit_at,
            partitions=list(s.assigned),
            lag=dict(s.lag),
            failures=dict(s.failures),
        )

    @property
    def transactions(self) -> tuple[int, int]:
        """(committed, aborted) Kafka transactions of the loop."""
        s = self._loop.stats
        return s.transactions, s.aborts

    def period_close_lag(self) -> dict[str, float]:
        """Seconds past due of the oldest open reporting period, per calendar, for a loop that
        closes periods (:meth:`processors.bordereaux.topology.BordereauxLoop.period_close_lag`);
        empty for any other loop."""
        measure: Callable[[], Mapping[str, float]] | None = getattr(self._loop, "period_close_lag", None)
        return dict(measure()) if measure is not None else {}

    async def wait_assigned(self) -> None:
        if self._loop.ready.is_set():
            return
        event = asyncio.Event()
        running = asyncio.get_running_loop()

        def handed_over() -> None:  # called from the loop's own thread
            running.call_soon_threadsafe(event.set)

        self._loop.when_ready(handed_over)
        await event.wait()


def iso_utc(epoch_s: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC string (``None`` stays ``None``)."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


# -- broker ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerCheck:
    reachable: bool
    checked_at: float
    """Unix seconds."""
    error: str | None = None


class BrokerProbe:
    """Whether a broker metadata request succeeds, asked at most once per ``cache_s`` seconds.

    ``check`` performs one blocking metadata request and raises when it fails; by default it is
    ``AdminClient.list_topics(timeout=timeout_s)`` on an admin client created in ``start()``.
    """

    def __init__(
        self,
        kafka: str | KafkaClients,
        *,
        timeout_s: float = 2.0,
        cache_s: float = 2.0,
        check: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = KafkaClients.of(kafka).admin()
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._check = check
        self._clock = clock
        self._admin: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._last: BrokerCheck | None = None
        self._last_at = 0.0
        self._running: asyncio.Task[BrokerCheck] | None = None

    @property
    def last(self) -> BrokerCheck | None:
        """The latest answer, without asking again."""
        return self._last

    async def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="broker-probe")
        if self._check is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self._config)

    async def stop(self) -> None:
        if self._running is not None:
            with contextlib.suppress(Exception):
                await self._running
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._admin = None

    async def check(self) -> BrokerCheck:
        """The cached answer if fresh, else a new metadata request (shared by concurrent callers)."""
        if self._last is not None and self._clock() - self._last_at < self.cache_s:
            return self._last
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._ask())
        return await asyncio.shield(self._running)

    async def _ask(self) -> BrokerCheck:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            raise RuntimeError("BrokerProbe.start() was not called")
        try:
            await loop.run_in_executor(self._executor, self._request)
            result = BrokerCheck(reachable=True, checked_at=time.time())
        except Exception as exc:
            result = BrokerCheck(reachable=False, checked_at=time.time(), error=_short(exc))
            if self._last is None or self._last.reachable:
                log.warning("broker unreachable: %s", result.error)
        else:
            if self._last is not None and not self._last.reachable:
                log.info("broker reachable again")
        self._last, self._last_at = result, self._clock()
        return result

    def _request(self) -> None:
        if self._check is not None:
            self._check()
            return
        self._admin.list_topics(timeout=self.timeout_s)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- error rate ------------------------------------------------------------------------------------


class ErrorRateWindow:
    """Failures / calls over roughly the last ``window_s`` seconds, from cumulative totals.

    ``record(failures, successes)`` adds a sample of an endpoint's running totals.  The rate is
    taken between the newest sample and the latest one at or before the window's start (or the
    oldest sample when the window is not full yet).
    """

    def __init__(self, window_s: float = 300.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()

    def record(self, failures: int, successes: int) -> None:
        now = self._clock()
        self._samples.append((now, failures, successes))
        start = now - self.window_s
        while len(self._samples) >= 2 and self._samples[1][0] <= start:
            self._samples.popleft()

    def calls(self) -> tuple[int, int]:
        """(failures, calls) within the window."""
        if len(self._samples) < 2:
            return 0, 0
        _, f0, s0 = self._samples[0]
        _, f1, s1 = self._samples[-1]
        failures, successes = max(0, f1 - f0), max(0, s1 - s0)
        return failures, failures + successes

    def error_rate(self) -> float | None:
        """Failures / calls in the window, or ``None`` when no call reached the endpoint."""
        failures, calls = self.calls()
        return failures / calls if calls else None


# -- status ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AppStatus:
    name: str
    group: str
    assigned_once: bool
    partitions: tuple[TP, ...]
    processed: int
    failed: int
    outputs: int
    rebalances: int
    backpressure_pauses: int
    last_success_at: float | None
    """Unix seconds."""
    endpoints: tuple[str, ...]
    lag: tuple[tuple[str, int, int], ...] = ()
    """(topic, partition, records not yet committed) per assigned partition."""
    failures: tuple[tuple[str, str, int], ...] = ()
    """(error class, ``retry``, ``dead_letter`` or ``parked``, records) since the process started."""
    duplicates_dropped: int = 0
    """Records whose event id the app had already answered (``dedupe`` in topics.yaml)."""
    retry_tiers: tuple[tuple[int, str, int], ...] = ()
    """(tier index, delay, records waiting) per retry tier of which this instance holds at least
    one partition whose lag is known: the group's lag summed over those partitions."""
    transactions: tuple[int, int] | None = None
    """(committed, aborted) Kafka transactions of an exactly-once app; None for the others."""
    period_close_lag: tuple[tuple[str, float], ...] = ()
    """(calendar, seconds) for an app that closes reporting periods (bordereaux); see
    :meth:`LoopView.period_close_lag`."""

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "assigned_once": self.assigned_once,
            "assigned_partitions": [{"topic": t, "partition": p} for t, p in self.partitions],
            "processed": self.processed,
            "failed": self.failed,
            "outputs": self.outputs,
            "rebalances": self.rebalances,
            "backpressure_pauses": self.backpressure_pauses,
            "duplicates_dropped": self.duplicates_dropped,
            "last_success_at": iso_utc(self.last_success_at),
            "endpoints": list(self.endpoints),
            "lag": [{"topic": t, "partition": p, "records": n} for t, p, n in self.lag],
        }


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    endpoint: str
    state: BreakerState
    consecutive_failures: int
    total_successes: int
    total_failures: int
    rejections: int
    opened_count: int
    last_success_at: float | None
    last_failure_at: float | None
    last_state_change_at: float | None
    """Unix seconds."""
    window_s: float
    failures_in_window: int
    calls_in_window: int
    error_rate: float | None = field(default=None)
    transitions: tuple[tuple[BreakerState, BreakerState, int], ...] = ()
    """(from, to, times) of every transition the breaker made."""

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "total_successes": self.total_successes,
            "total_failures": self.total_failures,
            "rejections": self.rejections,
            "opened_count": self.opened_count,
            "last_success_at": iso_utc(self.last_success_at),
            "last_failure_at": iso_utc(self.last_failure_at),
            "last_state_change_at": iso_utc(self.last_state_change_at),
            "error_rate": self.error_rate,
            "window_s": self.window_s,
            "failures_in_window": self.failures_in_window,
            "calls_in_window": self.calls_in_window,
        }


class HealthMonitor:
    """Readiness and status of the engines, breakers and broker of one process.

    ``engines`` is read live (a list the runner fills is fine).  ``breaker_clock`` is the clock
    the breakers read (monotonic seconds by default), used to turn their times into wall time.
    """

    def __init__(
        self,
        *,
        engines: Sequence[EngineView] = (),
        breakers: BreakerRegistry | None = None,
        broker: BrokerProbe | None = None,
        app_endpoints: Mapping[str, Sequence[str]] | None = None,
        window_s: float = 300.0,
        sample_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engines = engines
        self.breakers = breakers
        self.broker = broker
        self.app_endpoints = dict(app_endpoints or {})
        self.window_s = window_s
        self.sample_interval_s = sample_interval_s
        self._clock = clock
        self._breaker_clock = breaker_clock
        self._windows: dict[str, ErrorRateWindow] = {}
        self._assigned: set[int] = set()
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._sampler: asyncio.Task[None] | None = None
        self.last_readiness: Readiness | None = None
        """The latest answer of :meth:`readiness`."""

    async def start(self) -> None:
        if self.broker is not None:
            await self.broker.start()
        self._watch_engines()
        self.sample()
        self._sampler = asyncio.create_task(self._sample_forever(), name="health-sampler")

    async def stop(self) -> None:
        tasks = [*self._watchers.values(), *([self._sampler] if self._sampler is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        self._sampler = None
        if self.broker is not None:
            await self.broker.stop()

    # -- readiness ---------------------------------------------------------------------------

    def _watch_engines(self) -> None:
        for engine in list(self.engines):
            key = id(engine)
            if key in self._watchers or key in self._assigned:
                continue
            self._watchers[key] = asyncio.create_task(self._await_assignment(engine, key))

    async def _await_assignment(self, engine: EngineView, key: int) -> None:
        await engine.wait_assigned()
        self._assigned.add(key)

    async def readiness(self) -> Readiness:
        self._watch_engines()
        reasons = [
            f"app {engine.processor.name} has no partition assignment yet"
            for engine in self.engines
            if id(engine) not in self._assigned
        ]
        if self.broker is not None:
            check = await self.broker.check()
            if not check.reachable:
                reasons.append("the Kafka broker is unreachable")
        self.last_readiness = Readiness(ready=not reasons, reasons=tuple(reasons))
        return self.last_readiness

    # -- status ------------------------------------------------------------------------------

    def apps(self) -> list[AppStatus]:
        self._watch_engines()
        out = []
        for engine in self.engines:
            name = engine.processor.name
            stats = engine.stats
            out.append(
                AppStatus(
                    name=name,
                    group=engine.group,
                    assigned_once=id(engine) in self._assigned,
                    partitions=tuple(engine.assigned),
                    processed=stats.processed,
                    failed=stats.failed,
                    outputs=stats.outputs,
                    rebalances=stats.rebalances,
                    backpressure_pauses=stats.backpressure_pauses,
                    last_success_at=stats.last_success_at,
                    endpoints=tuple(self.app_endpoints.get(name, ())),
                    lag=tuple((t, p, n) for (t, p), n in sorted(stats.lag.items()) if n >= 0),
                    failures=tuple((c, d, n) for (c, d), n in sorted(stats.failures.items())),
                    duplicates_dropped=_duplicates_dropped(engine.processor),
                    retry_tiers=_tier_depths(engine.processor, stats.lag),
                    transactions=getattr(engine, "transactions", None),
                    period_close_lag=_period_close_lag(engine),
                )
            )
        return out

    def sample(self) -> dict[str, BreakerStats]:
        """Record every breaker's totals in its window; returns the snapshots."""
        snapshots = self.breakers.snapshot() if self.breakers is not None else {}
        for endpoint, stats in snapshots.items():
            window = self._windows.get(endpoint)
            if window is None:
                window = self._windows[endpoint] = ErrorRateWindow(self.window_s, clock=self._clock)
            window.record(stats.total_failures, stats.total_successes)
        # a breaker discarded with its endpoint (a deleted subscription) takes its window along
        for gone in [endpoint for endpoint in self._windows if endpoint not in snapshots]:
            del self._windows[gone]
        return snapshots

    def endpoints(self) -> list[EndpointStatus]:
        snapshots = self.sample()
        wall_offset = time.time() - self._breaker_clock()
        out = []
        for endpoint, stats in sorted(snapshots.items()):
            window = self._windows[endpoint]
            failures, calls = window.calls()
            out.append(
                EndpointStatus(
                    endpoint=endpoint,
                    state=stats.state,
                    consecutive_failures=stats.consecutive_failures,
                    total_successes=stats.total_successes,
                    total_failures=stats.total_failures,
                    rejections=stats.rejections,
                    opened_count=stats.opened_count,
                    last_success_at=_wall(stats.last_success_at, wall_offset),
                    last_failure_at=_wall(stats.last_failure_at, wall_offset),
                    last_state_change_at=_wall(stats.last_state_change_at, wall_offset),
                    window_s=self.window_s,
                    failures_in_window=failures,
                    calls_in_window=calls,
                    error_rate=window.error_rate(),
                    transitions=stats.transitions,
                )
            )
        return out

    async def status(self) -> dict[str, Any]:
        """The JSON document of ``/api/v1/status`` (without the inbound counters)."""
        readiness = await self.readiness()
        broker = self.broker.last if self.broker is not None else None
        return {
            "ready": readiness.ready,
            "reasons": list(readiness.reasons),
            "broker": None
            if broker is None
            else {
                "reachable": broker.reachable,
                "checked_at": iso_utc(broker.checked_at),
                "error": broker.error,
            },
            "apps": {app.name: app.as_json() for app in self.apps()},
            "endpoints": {status.endpoint: status.as_json() for status in self.endpoints()},
        }

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval_s)
            try:
                self.sample()
            except Exception:
                log.exception("health: sampling the breakers failed")


def _wall(reading: float | None, offset: float) -> float | None:
    return None if reading is None else reading + offset


def _tier_depths(processor: object, lag: Mapping[TP, int]) -> tuple[tuple[int, str, int], ...]:
    """Records waiting per retry tier of the app (``processor.topics``, the app's
    :class:`~processors.topics.catalogue.AppTopics`), from the lag the consumer already reports."""
    tiers = getattr(getattr(processor, "topics", None), "retry_tiers", ())
    if not tiers:
        return ()
    by_topic = {tier.topic: tier for tier in tiers}
    waiting: dict[str, int] = {}
    for (topic, _), records in lag.items():
        if records >= 0 and topic in by_topic:
            waiting[topic] = waiting.get(topic, 0) + records
    return tuple(
        (tier.index, format_duration(tier.delay_ms), waiting[tier.topic])
        for tier in tiers
        if tier.topic in waiting
    )


def _period_close_lag(engine: object) -> tuple[tuple[str, float], ...]:
    measure = getattr(engine, "period_close_lag", None)
    return tuple(sorted(measure().items())) if measure is not None else ()


def _duplicates_dropped(processor: object) -> int:
    answered = getattr(processor, "answered", None)
    return int(getattr(answered, "dropped", 0))
