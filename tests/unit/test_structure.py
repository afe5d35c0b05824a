"""Import and layering rules of the package, checked on the source (no imports executed)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ROOT / "processors"

#: librdkafka client properties the product sets.  Only ``processors/kafka/`` may name them:
#: everything else asks :class:`processors.kafka.KafkaClients` for a configuration by role.
CLIENT_PROPERTIES = frozenset(
    {
        "bootstrap.servers",
        "client.id",
        "group.id",
        "group.instance.id",
        "group.protocol",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "isolation.level",
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "enable.idempotence",
        "acks",
        "linger.ms",
        "batch.size",
        "queue.buffering.max.ms",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "message.max.bytes",
        "partitioner",
        "transactional.id",
        "transaction.timeout.ms",
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password",
    }
)


def _modules(base: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(base.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_no_module_outside_the_kafka_layer_writes_a_client_property() -> None:
    found: list[str] = []
    for path, tree in _modules(PRODUCT):
        if path.is_relative_to(PRODUCT / "kafka"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in CLIENT_PROPERTIES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "client configuration outside processors/kafka/:\n" + "\n".join(found)


def test_the_rule_sees_a_property_where_one_is_written() -> None:
    """The check above is not vacuous: it finds the properties the kafka layer itself writes."""
    seen = {
        node.value
        for _, tree in _modules(PRODUCT / "kafka")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in CLIENT_PROPERTIES
    }
    assert {"bootstrap.servers", "group.id", "enable.idempotence", "transactional.id"} <= seen


def _imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_the_product_imports_nothing_from_the_development_tooling() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path, tree in _modules(PRODUCT)
        for line, name in _imported(tree)
        if name == "processors_dev" or name.startswith("processors_dev.")
    ]
    assert not found, "the product imports development tooling:\n" + "\n".join(found)


def test_the_development_tooling_is_really_apart() -> None:
    """What moved out stays out (a module re-created in the product would pass the rule above)."""
    for gone in ("devbroker", "sandbox", "demo.py", "demo_bordereaux.py", "samples.py"):
        assert not (PRODUCT / gone).exists(), gone
    assert not (PRODUCT / "bordereaux" / "samples.py").exists()
    tooling = {name for _, tree in _modules(ROOT / "processors_dev") for _, name in _imported(tree)}
    assert "processors.runner" in tooling  # the rule's direction: tooling uses the product


#: The webhooks app still runs its own two-stage pipeline (fan-out, then delivery with the
#: delivery log); it moves onto the template with the webhook hot-path redesign.
PIPELINE_NOT_YET_ON_THE_TEMPLATE = frozenset({"processors/webhooks/app.py"})


def test_no_app_reimplements_the_per_record_pipeline() -> None:
    """The retry gate's steps are called from the app template only."""
    steps = {"already_in_retry", "follow"}
    found = []
    for path, tree in _modules(PRODUCT):
        name = str(path.relative_to(ROOT))
        if name in ("processors/runtime/app.py", "processors/runtime/routing.py"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in steps
                and name not in PIPELINE_NOT_YET_ON_THE_TEMPLATE
            ):
                found.append(f"{name}:{node.lineno}: .{node.attr}")
    assert not found, "per-record pipeline outside the app template:\n" + "\n".join(found)


def test_one_context_variable_carries_the_record_state() -> None:
    """Per-record state lives in processors/context.py (the SSRF pin of one request is not per record)."""
    allowed = {"processors/context.py", "processors/webhooks/transport.py"}
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _modules(PRODUCT)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ContextVar"
        and str(path.relative_to(ROOT)) not in allowed
    ]
    assert not found, found
