"""The payments slice end to end against a real broker, a real sandbox gateway and a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from processors.contract import ContentType
from processors.runtime.failures import H
from processors_dev.samples import CARD_TOKENS, premium_due, premium_due_stream
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import (
    Collector,
    committed_offsets,
    decode,
    end_offsets,
    group_caught_up,
    header,
    publish,
    sandbox_env,
    start_processor,
)

pytestmark = pytest.mark.timeout(420)


def _instalment_number(reference_id: str) -> int:
    return int(reference_id.rsplit("-I", 1)[1])


async def test_sigkill_mid_run_loses_nothing_reorders_nothing_and_charges_once(
    kafka_bootstrap: str, isolated_topics: Callable[[], tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    events = list(premium_due_stream(2_000, 200, seed=11))
    # 8 calls in flight at 40 ms each: about 200 events/s, so the kill lands mid-run.
    async with SandboxServer(gateway=GatewayConfig(latency_ms=40, seed=3)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        env["PROCESSORS_ENGINE__MAX_CONCURRENCY"] = "8"
        publish(kafka_bootstrap, billing, events)
        collector = Collector(kafka_bootstrap, [results])
        log_path = tmp_path / "processor.log"
        try:
            first = start_processor(env, "run", "payments", log_path=log_path)
            try:
                await collector.wait_for(lambda r: len(r) >= 400, timeout_s=120)
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(30)
            assert first.returncode == -signal.SIGKILL
            killed_at = len({decode(m).data.source_event_id for m in collector.records})  # type: ignore[union-attr]
            assert killed_at < len(events), "the processor finished before it was killed; nothing was tested"

            second = start_processor(env, "run", "payments", log_path=log_path)
            try:
                want = {e.event_id for e in events}

                def all_in(records: list[object]) -> bool:
                    got = {decode(m).data.source_event_id for m in collector.records}  # type: ignore[union-attr]
                    return want <= got

                await collector.wait_for(all_in, timeout_s=240)
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(60)
            assert second.returncode == 0, log_path.read_text()[-3000:]
        finally:
            collector.close()
        # The graceful stop committed everything: nothing would be processed again.
        assert committed_offsets(kafka_bootstrap, f"{prefix}payments", billing) == end_offsets(
            kafka_bootstrap, billing
        )

        by_policy: dict[str, list[int]] = defaultdict(list)
        first_seen: set[object] = set()
        for msg in collector.records:
            event = decode(msg)
            assert msg.key() == event.subject.encode()
            data = event.data
            if data.source_event_id in first_seen:  # type: ignore[union-attr]
                continue  # a re-processed event after the kill: same result, same key
            first_seen.add(data.source_event_id)  # type: ignore[union-attr]
            by_policy[event.subject].append(_instalment_number(data.reference_id))  # type: ignore[union-attr]
        assert len(first_seen) == 2_000
        assert len(by_policy) == 200
        for policy, instalments in by_policy.items():
            assert instalments == sorted(instalments), f"{policy} results out of order: {instalments}"
            assert instalments == list(range(1, 11))

        charges = sandbox.gateway.charges_by_key
        assert len(charges) == 2_000
        assert set(charges.values()) == {1}


async def test_poison_input_goes_to_the_dlq_with_a_reason_and_processing_continues(
    kafka_bootstrap: str, isolated_topics: Callable[[], tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    dlq = f"{prefix}integrations.payments.dlq"

    valid = premium_due(1, 1)
    good = json.loads(publish_json(valid))
    missing = {**good, "data": {k: v for k, v in good["data"].items() if k != "instalment_id"}}
    five_decimals = {**good, "data": {**good["data"], "amount": "1185.12345"}}
    unknown = {**good, "event_type": "policy.teleported"}
    json_h = [("content-type", b"application/json")]
    key = valid.subject.encode()
    poison = [
        (b"POL-GARBAGE", b"\x00\x00\x00\x03\xe9\xff\xfe garbage", []),
        (key, json.dumps(unknown).encode(), json_h),
        (key, json.dumps(missing).encode(), json_h),
        (key, json.dumps(five_decimals).encode(), json_h),
    ]
    after = [premium_due(2, i, token=CARD_TOKENS["ok"]) for i in range(1, 4)]
    declined = premium_due(3, 1, token=CARD_TOKENS["declined"], amount=Decimal("99.99"))

    async with SandboxServer(gateway=GatewayConfig(seed=5)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        publish(kafka_bootstrap, billing, [], raw=poison)
        publish(kafka_bootstrap, billing, [*after, declined], fmt=ContentType.JSON)
        collector = Collector(kafka_bootstrap, [results, dlq])
        proc = start_processor(env, "run", "payments", log_path=tmp_path / "p.log")
        try:
            await collector.wait_for(
                lambda r: len(collector.on(dlq)) >= 4 and len(collector.on(results)) >= 4, timeout_s=120
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            collector.close()
        assert proc.returncode == 0

    dead = collector.on(dlq)
    assert len(dead) == 4
    order = [p[1] for p in poison]
    dead.sort(key=lambda m: order.index(m.value()))  # the garbage has another key, so another partition
    reasons = [(header(m, H.ERROR_CLASS), header(m, H.ERROR_MESSAGE) or "") for m in dead]
    assert reasons[0][0] == "DecodeError"
    assert reasons[1][0] == "UnknownEventType"
    assert "policy.teleported" in reasons[1][1]
    assert reasons[2][0] == "ValidationFailed"
    assert "instalment_id" in reasons[2][1]
    assert reasons[3][0] == "ValidationFailed"
    assert "5 decimal places" in reasons[3][1]
    for msg in dead:
        assert header(msg, H.ORIGINAL_TOPIC) == billing
        assert header(msg, H.APP) == "payments"
        assert header(msg, H.GROUP) == f"{prefix}payments"
        assert header(msg, H.ORIGINAL_OFFSET) is not None
    assert [m.value() for m in dead] == order  # the original bytes, untouched
    assert [m.key() for m in dead] == [p[0] for p in poison]

    outcomes = {decode(m).data.reference_id: decode(m).event_type for m in collector.on(results)}  # type: ignore[union-attr]
    assert outcomes == {
        "POL-2024-000002-I001": "payment.completed",
        "POL-2024-000002-I002": "payment.completed",
        "POL-2024-000002-I003": "payment.completed",
        "POL-2024-000003-I001": "payment.failed",
    }
    failed = next(decode(m) for m in collector.on(results) if decode(m).event_type == "payment.failed")
    assert failed.data.decline_code == "insufficient_funds"  # type: ignore[union-attr]


def publish_json(event: object) -> bytes:
    from tests.integration.helpers import CODEC

    return CODEC.encode(event, ContentType.JSON)[0]  # type: ignore[arg-type]


async def test_a_rebalance_drains_and_commits_so_no_event_is_processed_twice(
    kafka_bootstrap: str, isolated_topics: Callable[[], tuple[Path, str]], tmp_path: Path
) -> None:
    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    events = list(premium_due_stream(1_200, 120, seed=5))
    async with SandboxServer(gateway=GatewayConfig(latency_ms=40, seed=9)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        env["PROCESSORS_ENGINE__MAX_CONCURRENCY"] = "8"
        publish(kafka_bootstrap, billing, events)
        collector = Collector(kafka_bootstrap, [results])
        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
        first = start_processor(env, "run", "payments", log_path=first_log)
        second = None
        try:
            await collector.wait_for(lambda r: len(r) >= 200, timeout_s=120)
            # The gateway slows down until the second instance holds partitions, so the
            # rebalance happens mid-stream however long the second takes to start.
            sandbox.gateway.update_config(latency_ms=1_500)
            second = start_processor(env, "run", "payments", log_path=second_log)
            await _logged(second_log, "app payments: assigned", second, timeout_s=180)
            collector.poll(0.5)
            assert len(collector.records) < len(events), "the first instance finished before the rebalance"
            sandbox.gateway.update_config(latency_ms=40)
            await collector.wait_for(lambda r: len(r) >= len(events), timeout_s=240)
        finally:
            for proc in (first, second):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (first, second):
                if proc is not None:
                    proc.wait(60)
            collector.poll(1.0)
            collector.close()
        assert first.returncode == 0, first_log.read_text()[-3000:]
        assert second is not None
        assert second.returncode == 0, second_log.read_text()[-3000:]
        charges = sandbox.gateway.charges_by_key

    # The second instance really took partitions over from the first.
    assert "app payments: assigned" in second_log.read_text()
    sources = [decode(m).data.source_event_id for m in collector.records]  # type: ignore[union-attr]
    assert len(sources) == len(events), "an event was processed twice (or lost) across the rebalance"
    assert set(sources) == {e.event_id for e in events}
    by_policy: dict[str, list[int]] = defaultdict(list)
    for msg in collector.records:
        event = decode(msg)
        by_policy[event.subject].append(_instalment_number(event.data.reference_id))  # type: ignore[union-attr]
    assert all(seq == list(range(1, 11)) for seq in by_policy.values())
    assert len(charges) == len(events)
    assert set(charges.values()) == {1}


async def _logged(path: Path, text: str, proc: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """Return once ``text`` is in the log at ``path``; fail if the process exits first or time runs out."""
    async with asyncio.timeout(timeout_s):
        while not _holds(path, text):
            assert proc.poll() is None, f"the process exited ({proc.returncode}) before logging {text!r}"
            await asyncio.sleep(0.2)  # polls the log file: the line is the event awaited


def _holds(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


@pytest.mark.parametrize(
    "source_limit",
    [
        pytest.param(None, id="as-the-catalogue-says"),
        pytest.param(4_000_000, id="source-raised-out-of-band"),
    ],
)
async def test_an_event_as_large_as_its_source_allows_is_dead_lettered_and_its_key_moves_on(
    kafka_bootstrap: str,
    isolated_topics: Callable[[], tuple[Path, str]],
    tmp_path: Path,
    source_limit: int | None,
) -> None:
    """A 1,000,000-byte premium.due the source topic accepted used to wedge its partition: its
    dead letter (the same bytes plus headers) was refused for its size, retried every second
    for ever, and the later events of its key never got a result.

    As ``topics.yaml`` has it, the DLQ takes whatever the source took plus the failure headers,
    so the dead letter holds the event whole.  Should the source's limit be raised on the
    cluster alone (4 MB here, and a 2,000,000-byte event), the DLQ still refuses it: the dead
    letter is then an excerpt with the original's size and sha256, and the key moves on too."""
    import hashlib

    import confluent_kafka
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    topics_file, prefix = isolated_topics()
    billing = f"{prefix}insurance.billing.events"
    results = f"{prefix}integrations.payment.results"
    dlq = f"{prefix}integrations.payments.dlq"
    later = [premium_due(7, i, token=CARD_TOKENS["ok"]) for i in range(1, 4)]
    key = later[0].subject.encode()
    size = 1_000_000 if source_limit is None else 2_000_000
    huge = b'{"event_type": "premium.due", "pad": "' + b"x" * (size - 40) + b'"}'
    if source_limit is not None:  # raised on the cluster only, as an operator might
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        entry = ConfigEntry(
            "max.message.bytes", str(source_limit), incremental_operation=AlterConfigOpType.SET
        )
        resource = ConfigResource(ResourceType.TOPIC, billing, incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=30)
    upstream = confluent_kafka.Producer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4_000_000}
    )
    refused: list[object] = []
    for _ in range(60):  # the broker applies an altered config a moment after acknowledging it
        refused.clear()
        upstream.produce(
            billing,
            key=key,
            value=huge,
            headers=[("content-type", b"application/json")],
            on_delivery=lambda err, _msg: refused.append(err) if err is not None else None,
        )
        assert upstream.flush(30) == 0
        if not refused:
            break
        await asyncio.sleep(0.5)  # polling the broker, which has no event to await
    assert not refused, refused
    publish(kafka_bootstrap, billing, later)

    async with SandboxServer(gateway=GatewayConfig(seed=5)) as sandbox:
        env = sandbox_env(prefix, topics_file, kafka_bootstrap, sandbox.url)
        collector = Collector(kafka_bootstrap, [results, dlq])
        proc = start_processor(env, "run", "payments", log_path=tmp_path / "p.log")
        try:
            await collector.wait_for(
                lambda r: len(collector.on(dlq)) >= 1 and len(collector.on(results)) >= 3, timeout_s=120
            )

            await collector.wait_for(
                group_caught_up(kafka_bootstrap, f"{prefix}payments", billing), timeout_s=60
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            collector.close()
        assert proc.returncode == 0, (tmp_path / "p.log").read_text()[-3000:]

    [letter] = collector.on(dlq)
    assert header(letter, H.ERROR_CLASS) == "ValidationFailed"  # a JSON object, but no event
    assert header(letter, H.ORIGINAL_TOPIC) == billing
    assert header(letter, H.ORIGINAL_OFFSET) == "0"
    if source_limit is None:
        assert letter.value() == huge  # whole
        assert header(letter, H.VALUE_TRUNCATED) is None
    else:
        assert header(letter, H.VALUE_TRUNCATED) == "true"
        assert header(letter, H.VALUE_SIZE) == str(len(huge))
        assert header(letter, H.VALUE_SHA256) == hashlib.sha256(huge).hexdigest()
        assert huge.startswith(letter.value() or b"x")  # an excerpt of the original bytes
        assert len(letter.value() or b"") < len(huge)
    assert sorted(decode(m).data.reference_id for m in collector.on(results)) == [  # type: ignore[union-attr]
        "POL-2024-000007-I001",
        "POL-2024-000007-I002",
        "POL-2024-000007-I003",
    ]
