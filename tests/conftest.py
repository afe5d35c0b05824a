"""Shared fixtures.

Integration tests get a real Kafka broker from ``processors_dev.devbroker``: an external cluster
(``KAFKA_BOOTSTRAP_SERVERS``), Docker, or Apache Kafka run from its Maven Central jars.  The
embedded broker is refused unless ``PROCESSORS_TEST_ALLOW_EMBEDDED=1``: it does not honour
transaction aborts, and a suite that silently fell back to it would hide bugs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    items[:] = lock_holders_first(items, workers)


def _takes_the_lock(item: pytest.Item) -> bool:
    return "one_heavy_at_a_time" in getattr(item, "fixturenames", ())


def lock_holders_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The collection in the order that lets ``--dist worksteal`` finish soonest.

    Worksteal hands each worker one contiguous slice of the collection (the first
    ``len // workers`` items to the first, and so on), and an idle worker later steals the back
    half of the longest queue.  The tests that take the heavy-test lock are the longest of the
    suite (minutes each): collected where they are, they could start late and leave the other
    workers idle at the end.  So they lead the first slice, where they run one after the other
    (in different slices they would only wait for each other's lock), and every other test
    keeps its collected order.  Spreading the other long tests to the fronts of the slices was
    measured and rejected: side by side, multi-process fault scenarios slow each other down
    more than they gain (a full run took 35 min against 33).  The order depends only on the
    collection, so every worker computes the same one, as xdist requires.
    """
    if workers < 2:
        return items
    locked = [item for item in items if _takes_the_lock(item)]
    rest = [item for item in items if not _takes_the_lock(item)]
    return locked + rest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    """With ``PROCESSORS_TEST_TIMELINE=FILE``, each test's worker, start and end (Unix seconds)
    are appended to FILE, one line per test: how a run's time was spent, and where a worker
    stood idle."""
    path = os.environ.get("PROCESSORS_TEST_TIMELINE")
    start = time.time()
    try:
        return (yield)
    finally:
        if path:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(path, "a", encoding="utf-8") as out:
                out.write(f"{worker} {start:.1f} {time.time():.1f} {item.nodeid}\n")


@pytest.fixture
def figures(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """Records one line of a scenario's measured figures (events, results, duplicates, charges
    per key, time to recover).  Figures are reported, never asserted on: the lines of every test
    that ran are printed together at the end of the run, from the workers too."""

    def record(line: str) -> None:
        record_property("figures", line)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [
        (report.nodeid, value)
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "figures"
    ]
    if lines:
        terminalreporter.section("measured figures")
        for nodeid, value in sorted(lines):
            terminalreporter.write_line(f"{nodeid.rsplit('::', 1)[-1]}: {value}")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Undo what a test did to the logging set-up (``processors run`` installs a JSON, redacting
    handler on the root logger): every test starts from the same logging, whatever ran before."""
    root = logging.getLogger()
    handlers, filters, level = list(root.handlers), list(root.filters), root.level
    # Loggers whose level ``configure_logging`` sets (the SSH library's is raised to WARNING).
    quieted = {name: logging.getLogger(name).level for name in ("asyncssh",)}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    for flt in [f for f in root.filters if f not in filters]:
        root.removeFilter(flt)
    root.setLevel(level)
    for name, was in quieted.items():
        logging.getLogger(name).setLevel(was)


@pytest.fixture(autouse=True)
def _portal_store_per_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's API (with the webhooks app it serves ``/graphql``) gets its own portal store:
    the default ``sqlite:///var/portal.db`` is one file per working directory, and a store built
    from one test's topics is refused, by design, by the next test's differently named topics.
    A test that names a store (in its environment or its settings) uses that one."""
    if "PROCESSORS_PORTAL__DATABASE_URL" not in os.environ:
        monkeypatch.setenv("PROCESSORS_PORTAL__DATABASE_URL", f"sqlite:///{tmp_path / 'portal.db'}")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[object]:
    from processors_dev.devbroker import BrokerKind, provide_broker

    allow = [BrokerKind.EXTERNAL, BrokerKind.DOCKER, BrokerKind.APACHE]
    if os.environ.get("PROCESSORS_TEST_ALLOW_EMBEDDED") == "1":
        allow.append(BrokerKind.EMBEDDED)
    broker = provide_broker(allow=allow)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: object) -> str:
    return str(kafka_broker.info.bootstrap_servers)  # type: ignore[attr-defined]


@pytest.fixture
def one_heavy_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests that keep both cores busy for minutes take turns across the run's worker processes.

    Two of them side by side on a two-core machine (each with its broker) slow each other down
    several times over, past their own deadlines; one at a time, each finishes in its time.  The
    lock file lives in the run's temporary root, which every xdist worker shares.
    """
    root = tmp_path_factory.getbasetemp().parent
    with open(root / "heavy-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_HEX_AS_LETTERS = str.maketrans("0123456789", "ghijklmnop")


@pytest.fixture
def isolated_topics(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Callable[..., tuple[Path, str]]]:
    """A copy of topics.yaml whose every topic name carries a unique prefix, applied to the broker.

    Returns (topics file, prefix); the prefix is also a good consumer-group prefix. The topics
    are deleted after the test, so a long run does not pile up thousands of partitions.
    """
    created: list[list[str]] = []

    def make(
        payments_retry_tiers: str | None = None,
        *,
        webhooks_retry_tiers: str | None = None,
        dedupe: bool = True,
    ) -> tuple[Path, str]:
        from processors.topics.admin import apply
        from processors.topics.catalogue import load_catalogue

        # letters only: a prefix with 8 digits in a row would be masked in log lines (a digit
        # run like an account number), and tests that read topic names from logs would miss it
        prefix = f"t{uuid.uuid4().hex[:10].translate(_HEX_AS_LETTERS)}."
        text = (ROOT / "topics.yaml").read_text()
        # Shorter tiers keep failure-path tests quick.
        for app, tiers in (("payments", payments_retry_tiers), ("webhooks", webhooks_retry_tiers)):
            if tiers is not None:
                marker = f"  {app}:\n"
                head, _, tail = text.partition(marker)
                tail = re.sub(r"retry_tiers: \[[^\]]*\]", f"retry_tiers: {tiers}", tail, count=1)
                text = head + marker + tail
        if not dedupe:  # apps answer every copy of an event id (no dedupe window)
            text = re.sub(r"\n    dedupe: \{window: [^}]*\}", "", text)
        text = re.sub(r"(?<![\w.])(insurance|integrations|reinsurance|regulatory)\.", prefix + r"\1.", text)
        path = tmp_path / f"{prefix}topics.yaml"
        path.write_text(text)
        catalogue = load_catalogue(path)
        apply({"bootstrap.servers": kafka_bootstrap}, catalogue, replication_factor=1)
        created.append([topic.name for topic in catalogue.topics])
        return path, prefix

    yield make
    if created:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for names in created:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                # Best effort: a topic the test deleted itself, a slow broker.
                with contextlib.suppress(Exception):
                    future.result(timeout=60)
