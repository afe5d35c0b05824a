"""The exactly-once bordereaux loop in ``/readyz`` and ``/api/v1/status``, on a real broker.

The loop runs in its own thread; health sees it like an engine: ready once its first
assignment is restored, then its records, outputs and last committed transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processors.runner import Runner
from processors.settings import load_settings
from processors.topics.catalogue import load_catalogue
from tests.bordereaux_oracle import generate
from tests.integration.bordereaux_helpers import BOOK, publish_in_order
from tests.integration.test_api_health import AUTH, TOKEN, until

pytestmark = pytest.mark.timeout(300)


async def test_the_bordereaux_loop_shows_in_readiness_and_status(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]]
) -> None:
    topics_file, prefix = isolated_topics()
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap,
        topics_file=topics_file,
        group_prefix=prefix,
        bordereaux={"treaties_file": str(BOOK), "instance_id": f"health-{uuid.uuid4().hex[:6]}"},
        api={"enabled": True, "port": 0, "auth_token": TOKEN},
    )
    published = generate(11, 600)
    await asyncio.to_thread(publish_in_order, kafka_bootstrap, prefix, published)
    runner = Runner(settings, ["bordereaux"], catalogue=load_catalogue(topics_file))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(60):
            while runner.api is None:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        api = runner.api
        assert api is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:

            async def status() -> dict[str, Any]:
                async with client.get(f"{api.url}/api/v1/status", headers=AUTH) as response:
                    assert response.status == 200, await response.text()
                    body: dict[str, Any] = await response.json()
                    return body

            async def ready() -> bool:
                async with client.get(f"{api.url}/readyz") as response:
                    return response.status == 200

            await until(ready, timeout_s=120, what="/readyz answers 200")

            async def all_counted() -> bool:
                app = (await status())["apps"]["bordereaux"]
                return bool(app["processed"] >= len(published) and app["last_success_at"])

            await until(all_counted, timeout_s=120, what="every published event counted")
            document = await status()
        assert document["ready"] is True
        app = document["apps"]["bordereaux"]
        assert app["group"] == f"{prefix}bordereaux"
        topics = {part["topic"] for part in app["assigned_partitions"]}
        assert topics == {
            f"{prefix}insurance.policy.events",
            f"{prefix}insurance.claim.events",
            f"{prefix}integrations.bordereaux.by-policy",
            f"{prefix}integrations.bordereaux.partials",
        }
        assert app["outputs"] > 0  # routed events at least
        assert app["rebalances"] >= 1
        assert app["last_success_at"].endswith("Z")
    finally:
        stop.set()
        await task
