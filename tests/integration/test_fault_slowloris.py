"""A slow-loris partner (accepts, then answers one byte a second) holds only its own slots.

Two partners subscribe to the same events: a healthy one, and one whose server accepts every
connection and then drips its answer a byte a second.  The healthy partner gets every delivery
while the slow one is stuck; the slow one never holds more connections than its subscription's
``max_concurrency``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from processors.runner import Runner
from processors.topics.catalogue import load_catalogue
from processors.webhooks.secrets import generate_secret
from processors.webhooks.signing import webhook_id_for
from processors_dev.samples import premium_due_stream
from processors_dev.sandbox.partners import PartnerBehaviour, PartnerSandbox
from tests.integration.helpers import publish
from tests.integration.test_webhooks_fanout import Api, started, webhook_settings

pytestmark = pytest.mark.timeout(400)

SLOW_SLOTS = 3


class SlowLoris:
    """Accepts connections, reads the request, then sends its answer one byte a second."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.connections += 1
        self.most_open = max(self.most_open, self.open)
        closed: asyncio.Task[bytes] | None = None
        try:
            await reader.readuntil(b"\r\n\r\n")
            closed = asyncio.create_task(reader.read())  # returns when the client hangs up
            # far longer than the test: a slot it takes is held until the app stops
            for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"." * 3600 + b"\r\n\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                # the drip itself (this is what the partner does), cut short by a hang-up
                done, _ = await asyncio.wait({closed}, timeout=1.0)
                if done:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if closed is not None:
                closed.cancel()
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> SlowLoris:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_a_slow_loris_partner_holds_only_its_own_slots(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    session: aiohttp.ClientSession,
    figures: Callable[[str], None],
) -> None:
    topics_file, prefix = isolated_topics()
    settings = webhook_settings(kafka_bootstrap, topics_file, prefix)
    # No deadline runs out during the test: every slot the slow partner takes stays taken, so
    # the count of its connections is exact (a released slot would race its connection's close).
    patient = topics_file.with_name(f"{prefix}patient-resilience.yaml")
    patient.write_text(
        "endpoints:\n  partner-webhooks:\n    retry: {max_attempts: 1}\n"
        "    timeout: {read_timeout_ms: 600000, deadline_ms: 600000}\n"
    )
    settings = settings.model_copy(update={"resilience_file": patient})
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    events = list(premium_due_stream(150, 50, seed=12))
    healthy_secret = generate_secret().get_secret_value()
    async with PartnerSandbox() as partners, SlowLoris() as slow:
        healthy = partners.add("healthy", PartnerBehaviour(), [healthy_secret])
        stop, task = await started(runner)
        try:
            assert runner.api is not None
            api = Api(runner.api.url, session)
            await api.subscribe("slow", slow.url, ["premium.*"], max_concurrency=SLOW_SLOTS)
            good = await api.subscribe(
                "healthy", partners.url("healthy"), ["premium.*"], secret=healthy_secret
            )
            publish(kafka_bootstrap, f"{prefix}insurance.billing.events", events)
            expected = {webhook_id_for(good.id, str(e.event_id)) for e in events}
            async with asyncio.timeout(120):
                await healthy.wait_until(lambda p: p.has_accepted(expected))
            assert slow.open >= 1, "the slow partner was not holding connections meanwhile"
        finally:
            stop.set()
            await task

    figures(
        f"slow-loris partner: events={len(events)} healthy deliveries={len(healthy.accepted_ids())} "
        f"(expected {len(expected)}) slow partner connections={slow.connections} "
        f"most open at once={slow.most_open} (its max_concurrency {SLOW_SLOTS})"
    )
    assert slow.connections >= 1
    assert slow.most_open <= SLOW_SLOTS, f"the slow partner held {slow.most_open} connections"
