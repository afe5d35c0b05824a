"""The portal page in a real headless Chromium, against the real stack.

A real broker, the webhooks app with the API (as ``processors run webhooks --api``: the page at
``/portal``, GraphQL at ``/graphql``, the query store projected from the topics), a partner and
its key made through the operator API, and a real HTTP receiver on 127.0.0.1 that answers 500
until the test lets it succeed.  Retries wait 10 hours, so the only way the message reaches the
receiver again is the page's "Redeliver" button.

Chromium drives the page like a partner: a wrong key is refused with a message; the right key
signs in; the delivery log filtered on FAILED shows the failed message; its drill-down shows the
request as sent and the attempt; "Redeliver" sends it again, and the receiver gets it, with the
same webhook id, correctly signed.  Every request the page made stayed on the server's origin,
and no script error or policy violation was reported.

Selenium is synchronous: the browser is driven on a worker thread while the event loop serves
the stack; every wait is on a condition (WebDriverWait, an asyncio event), never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import confluent_kafka
import pytest
from aiohttp import web
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from processors.contract import Event
from processors.kafka import KafkaClients
from processors.runner import Runner
from processors.settings import Settings, load_settings
from processors.topics.catalogue import load_catalogue
from processors.webhooks.signing import webhook_id_for
from processors.webhooks.verify import verify_webhook
from processors_dev.samples import mixed_events
from tests import portal_samples as samples
from tests.integration.helpers import publish
from tests.integration.test_webhooks_fanout import RESILIENCE, started

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STATIC = Path(__file__).resolve().parents[2] / "processors" / "portal" / "static"
TOKEN = "portal-page-operator-t0ken"
PARTNER_NAME = "Harbour Brokers <b>Ltd</b>"  # markup in data must show as text
NO_RETRY_TIERS = "[10h]"
WAIT_S = 60.0


# ---------------------------------------------------------------------------------- the receiver


@dataclass
class Received:
    webhook_id: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A partner's endpoint: answers 500 while ``failing``, then 200; remembers every request."""

    failing: bool = True
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if self.failing else 200
        received = Received(request.headers.get("webhook-id", ""), status, dict(request.headers), body)
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
        return web.Response(status=status, text="receiver down" if self.failing else "stored")

    async def wait_until(self, match: Callable[[Received], bool]) -> Received:
        """The first request ``match`` accepts, once it arrived."""

        def found() -> Received | None:
            return next((r for r in self.requests if match(r)), None)

        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result

    async def wait_for(self, webhook_id: str, status: int) -> Received:
        return await self.wait_until(lambda r: (r.webhook_id, r.status) == (webhook_id, status))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    try:
        yield receiver
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------- the stack


def stack_settings(bootstrap: str, topics_file: Path, prefix: str, tmp_path: Path) -> Settings:
    resilience = topics_file.with_name(f"{prefix}resilience.yaml")
    resilience.write_text(RESILIENCE)
    return load_settings(
        bootstrap_servers=bootstrap,
        topics_file=topics_file,
        resilience_file=resilience,
        group_prefix=prefix,
        webhooks={"allow": ["127.0.0.0/8"], "ephemeral_key": True},
        api={"enabled": True, "port": 0, "auth_token": TOKEN},
        portal={"database_url": f"sqlite:///{tmp_path / 'portal.db'}"},
    )


async def operator_call(session: aiohttp.ClientSession, base: str, path: str, body: Any, token: str) -> Any:
    async with session.post(base + path, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        document = await r.json()
        assert r.status == 201, (path, r.status, document)
        return document


@dataclass(frozen=True)
class Stack:
    """The running stack: the API's base URL, a broker partner and its key, the topic prefix."""

    base: str
    partner: dict[str, Any]
    key: str
    prefix: str
    bootstrap: str


async def new_partner(base: str, fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A partner made through the operator API, and a key of its own."""
    async with aiohttp.ClientSession() as session:
        partner = await operator_call(session, base, "/api/v1/partners", fields, TOKEN)
        made = await operator_call(session, base, f"/api/v1/partners/{partner['id']}/keys", {}, TOKEN)
    return partner, str(made["key"])


def produce_report(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    """A bordereau in a committed Kafka transaction, as the bordereaux app writes reports."""
    producer = confluent_kafka.Producer(KafkaClients(bootstrap).transactional(f"page-{uuid.uuid4().hex}"))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0
    producer.commit_transaction(30)


def produce_plain(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


@pytest.fixture
async def stack(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> AsyncIterator[Stack]:
    topics_file, prefix = isolated_topics(webhooks_retry_tiers=NO_RETRY_TIERS)
    settings = stack_settings(kafka_bootstrap, topics_file, prefix, tmp_path)
    runner = Runner(settings, ["webhooks"], catalogue=load_catalogue(topics_file))
    stop, task = await started(runner)
    try:
        assert runner.api is not None
        base = runner.api.url
        partner, key = await new_partner(base, {"name": PARTNER_NAME, "kind": "broker"})
        yield Stack(base, partner, key, prefix, kafka_bootstrap)
    finally:
        stop.set()
        await task


def policy_event() -> Event:
    return next(e for e in mixed_events(50, 5, seed=15) if e.event_type == "policy.issued")


# ---------------------------------------------------------------------------------- the browser


class Page:
    """The portal page in Chromium, as a partner uses it (called on a worker thread)."""

    def __init__(self, driver: webdriver.Chrome, base: str) -> None:
        self.driver = driver
        self.base = base
        self.wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.25)

    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def until(self, condition: Callable[[webdriver.Chrome], Any], what: str) -> Any:
        try:
            return self.wait.until(condition)
        except TimeoutException:
            raise AssertionError(f"not within {WAIT_S:g} s: {what}; {self.shown()}") from None

    def shown(self) -> str:
        """What the page says (for a failure's message)."""
        said = {
            name: self.driver.execute_script(f"return document.getElementById('{name}')?.textContent")
            for name in ("status", "error", "signin-error")
        }
        return f"the page shows {said}, console {self.console_problems()}"

    def open(self) -> None:
        self.driver.get(self.base + "/portal")
        self.until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "page ready"
        )

    def sign_in(self, key: str) -> None:
        field_ = self.by_id("key")
        field_.clear()
        field_.send_keys(key, Keys.ENTER)

    def refused_sign_in(self) -> str:
        self.until(lambda d: d.find_element(By.ID, "signin-error").is_displayed(), "the sign-in error")
        return str(self.by_id("signin-error").text)

    def signed_in(self) -> str:
        self.until(lambda d: d.find_element(By.ID, "app").is_displayed(), "signed in")
        return str(self.by_id("session-name").text)

    def find_in_log(self, webhook_id: str, status: str) -> WebElement:
        """The log filtered on ``status``, searched again until the message shows."""
        self.by_id("tab-deliveries").click()
        Select(self.by_id("filter-status")).select_by_value(status)
        selector = f'#deliveries-table tbody tr[data-webhook-id="{webhook_id}"][data-status="{status}"]'

        def row(driver: webdriver.Chrome) -> WebElement | None:
            found = driver.find_elements(By.CSS_SELECTOR, selector)
            return found[0] if found else None

        shown: WebElement = self.refreshing(row, "filter-apply", f"{webhook_id} {status} in the log")
        return shown

    def open_message(self, row: WebElement, webhook_id: str) -> None:
        row.find_element(By.CSS_SELECTOR, "button.open-message").click()
        self.until(
            lambda d: (
                d.find_element(By.ID, "message").is_displayed()
                and d.find_element(By.ID, "message-id").text == webhook_id
            ),
            "the message's drill-down",
        )

    def headers_shown(self) -> dict[str, str]:
        rows = self.driver.find_elements(By.CSS_SELECTOR, "#message-headers tbody tr")
        return {
            r.find_element(By.TAG_NAME, "th").text.lower(): r.find_element(By.TAG_NAME, "td").text
            for r in rows
        }

    def redeliver(self) -> str:
        self.by_id("redeliver").click()
        self.until(lambda d: "Queued" in d.find_element(By.ID, "status").text, "the redelivery's answer")
        return str(self.by_id("status").text)

    def refreshing(self, condition: Callable[[webdriver.Chrome], Any], refresh: str, what: str) -> Any:
        """Wait for ``condition``, pressing the ``refresh`` button between checks (the query
        store follows the topics, a moment behind).  Once a second at most: the key's rate
        limit is not what these tests are about."""

        def check(driver: webdriver.Chrome) -> Any:
            result = condition(driver)
            if not result and driver.find_element(By.ID, refresh).is_enabled():
                driver.find_element(By.ID, refresh).click()
            return result

        slow = WebDriverWait(
            self.driver, WAIT_S, poll_frequency=1.0, ignored_exceptions=[StaleElementReferenceException]
        )
        try:
            return slow.until(check)
        except TimeoutException:
            raise AssertionError(f"not within {WAIT_S:g} s: {what}; {self.shown()}") from None

    def press_endpoint_button(self, label: str) -> None:
        """Click the endpoint table's button named ``label`` (the table is drawn again after
        every change, so a button found a moment ago may be gone: found and clicked at once)."""

        def press(driver: webdriver.Chrome) -> bool:
            found = driver.find_elements(By.CSS_SELECTOR, f'#endpoints-table button[aria-label="{label}"]')
            if not found:
                return False
            found[0].click()
            return True

        self.refreshing(press, "endpoints-refresh", f"the button {label!r}")

    def endpoint_row_when(self, description: str, match: Callable[[str], bool]) -> str:
        def row(driver: webdriver.Chrome) -> str | None:
            for tr in driver.find_elements(By.CSS_SELECTOR, "#endpoints-table tbody tr"):
                text = str(tr.text)
                if description in text and match(text):
                    return text
            return None

        found: str = self.refreshing(row, "endpoints-refresh", f"the endpoint row of {description}")
        return found

    def confirm(self, label: str, reason: str | None = None) -> None:
        self.press_endpoint_button(label)
        self.until(lambda d: d.find_element(By.ID, "ask").is_displayed(), "the confirmation dialog")
        if reason is not None:
            self.by_id("ask-reason").send_keys(reason)
        self.by_id("ask-ok").click()
        self.until(lambda d: not d.find_element(By.ID, "ask").is_displayed(), "the dialog closed")

    def shown_secret(self) -> str:
        self.until(
            lambda d: (
                d.find_element(By.ID, "secret-panel").is_displayed()
                and d.find_element(By.ID, "secret-value").get_attribute("value")
            ),
            "the secret, shown once",
        )
        return str(self.by_id("secret-value").get_attribute("value"))

    def send_test_event(self, description: str) -> str:
        """Press "Send test event" for the endpoint; the webhook id the page reports."""
        before = str(self.by_id("status").text)
        self.press_endpoint_button(f"Send a test event to {description}")
        self.until(
            lambda d: (
                d.find_element(By.ID, "status").text != before
                and "Test event sent" in d.find_element(By.ID, "status").text
            ),
            "the test event's answer",
        )
        found = re.search(r"as message (msg_[0-9a-f]+)", str(self.by_id("status").text))
        assert found is not None, self.by_id("status").text
        return found.group(1)

    def requests_made(self) -> tuple[list[str], list[str]]:
        """Every URL the page requested: resource timing, and Chromium's network log (the
        requests made by a document of the page; the browser's own, such as its new-tab page
        before the test navigated, are not the page's)."""
        timed = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name)"
            ".concat(performance.getEntriesByType('navigation').map((e) => e.name))"
        )
        sent = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent" and str(
                params.get("documentURL", "")
            ).startswith(self.base + "/"):
                sent.append(params["request"]["url"])
        return list(timed), sent

    def console_problems(self) -> list[str]:
        return [
            str(entry["message"])
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE"
            and not ("/graphql" in entry["message"] and "status of 401" in entry["message"])
        ]


# ---------------------------------------------------------------------------------- the test


async def test_a_partner_finds_a_failed_delivery_and_redelivers_it_from_the_page(
    kafka_bootstrap: str, stack: Stack, receiver: Receiver, chrome: webdriver.Chrome
) -> None:
    base, key = stack.base, stack.key
    async with aiohttp.ClientSession() as session:
        endpoint = await operator_call(
            session, base, "/api/v1/webhooks", {"url": receiver.url, "events": ["policy.*"]}, key
        )
    event = policy_event()
    webhook_id = webhook_id_for(endpoint["id"], str(event.event_id))
    publish(kafka_bootstrap, f"{stack.prefix}insurance.policy.events", [event])
    first = await receiver.wait_for(webhook_id, 500)
    receiver.failing = False  # from now on the partner's receiver stores what it gets

    page = Page(chrome, base)

    def find_and_redeliver() -> tuple[str, str, dict[str, str], str, str, str]:
        page.open()
        page.sign_in("pk_live_" + secrets.token_urlsafe(40))
        refusal = page.refused_sign_in()
        page.sign_in(key)
        shown_name = page.signed_in()
        row = page.find_in_log(webhook_id, "FAILED")
        page.open_message(row, webhook_id)
        headers = page.headers_shown()
        body = str(page.by_id("message-body").text)
        attempts = str(page.by_id("message-attempts").text)
        answer = page.redeliver()
        return refusal, shown_name, headers, body, attempts, answer

    refusal, shown_name, headers, body, attempts, answer = await asyncio.to_thread(find_and_redeliver)

    again = await receiver.wait_for(webhook_id, 200)

    def after_redelivery() -> tuple[tuple[list[str], list[str]], list[str], int]:
        page.find_in_log(webhook_id, "DELIVERED")  # the log shows the outcome too
        requests = page.requests_made()
        problems = page.console_problems()
        page.by_id("sign-out").click()
        stored = int(chrome.execute_script("return sessionStorage.length"))
        return requests, problems, stored

    requests, problems, stored = await asyncio.to_thread(after_redelivery)

    # A wrong key: refused, with the server's message on the page.
    assert refusal.startswith("Sign-in refused: ")
    assert len(refusal) > len("Sign-in refused: ")
    # The right one: the partner, its name shown as text.
    assert shown_name == PARTNER_NAME
    # The drill-down shows the request as sent.
    assert headers["webhook-id"] == webhook_id
    assert headers["x-webhook-event-type"] == "policy.issued"
    assert json.loads(body) == json.loads(first.body)
    assert "FAILED" in attempts
    assert "HTTP 500" in attempts
    assert "Queued 1 message(s)" in answer
    assert webhook_id in answer
    # The receiver got the message again: the same webhook id, the same body, correctly signed.
    assert again.webhook_id == first.webhook_id == webhook_id
    assert again.body == first.body
    assert json.loads(again.body)["webhook_id"] == webhook_id
    verify_webhook(again.body, again.headers, [endpoint["secret"]])
    assert sum(1 for r in receiver.requests if r.webhook_id == webhook_id) == 2
    # Nothing outside the server's origin, no script error, no policy violation; signed out.
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    timed, sent = requests
    for seen in (timed, sent):
        assert f"{origin}/graphql" in seen
        assert f"{origin}/portal/portal.js" in seen
        # data: URLs never leave the browser (Chromium draws the date inputs' icons with them)
        assert [u for u in seen if not u.startswith((origin + "/", "data:"))] == []
    assert problems == []
    assert stored == 0


async def test_a_partner_creates_an_endpoint_tests_it_rotates_its_secret_and_disables_it(
    stack: Stack, receiver: Receiver, chrome: webdriver.Chrome
) -> None:
    receiver.failing = False
    page = Page(chrome, stack.base)

    def create() -> str:
        page.open()
        page.sign_in(stack.key)
        page.signed_in()
        page.by_id("create-url").send_keys(receiver.url)
        page.by_id("create-events").send_keys("policy.*, claim.settled")
        page.by_id("create-description").send_keys("Claims desk")
        page.driver.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
        return page.shown_secret()

    def go_live() -> str:
        page.by_id("tab-deliveries").click()
        page.by_id("live-start").click()
        page.until(lambda d: d.find_element(By.ID, "live-state").text == "Live.", "the live feed open")
        state = str(page.by_id("live-state").text)
        page.by_id("tab-overview").click()
        return state

    secret = await asyncio.to_thread(create)
    live_state = await asyncio.to_thread(go_live)
    test_id = await asyncio.to_thread(page.send_test_event, "Claims desk")
    tested = await receiver.wait_until(lambda r: r.webhook_id == test_id)

    def seen_live() -> list[str]:
        """The live feed's lines about the test event, once its delivery outcome came."""
        page.by_id("tab-deliveries").click()
        selector = f'#live-items li[data-webhook-id="{test_id}"]'
        page.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, selector + '[data-status="DELIVERED"]'),
            "the test event's outcome in the live feed",
        )
        lines = [str(e.text) for e in page.driver.find_elements(By.CSS_SELECTOR, selector)]
        page.by_id("live-stop").click()
        page.by_id("tab-overview").click()
        return lines

    live_lines = await asyncio.to_thread(seen_live)

    def rotate() -> tuple[str, str]:
        page.by_id("secret-hide").click()
        page.confirm("Rotate the secret of Claims desk")
        return page.shown_secret(), str(page.by_id("secret-context").text)

    rotated, context = await asyncio.to_thread(rotate)
    second_id = await asyncio.to_thread(page.send_test_event, "Claims desk")
    second = await receiver.wait_until(lambda r: r.webhook_id == second_id)

    def disable_and_enable() -> tuple[str, str, str, str]:
        page.confirm("Disable Claims desk", reason="maintenance window")
        disabled = page.endpoint_row_when("Claims desk", lambda text: "disabled" in text)
        page.press_endpoint_button("Enable Claims desk")
        enabled = page.endpoint_row_when("Claims desk", lambda text: "Disable" in text)
        page.by_id("tab-catalogue").click()
        page.until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, 'details.event-type[data-event-type="policy.issued"]')
                and d.find_element(By.ID, "snippet").text.startswith('"""')
            ),
            "the catalogue and the snippet",
        )
        details = page.driver.find_element(
            By.CSS_SELECTOR, 'details.event-type[data-event-type="policy.issued"]'
        )
        details.find_element(By.TAG_NAME, "summary").click()
        example = str(details.find_element(By.CSS_SELECTOR, "pre").text)
        snippet = str(page.driver.execute_script("return document.getElementById('snippet').textContent"))
        return disabled, enabled, example, snippet

    disabled, enabled, example, snippet = await asyncio.to_thread(disable_and_enable)
    problems = await asyncio.to_thread(page.console_problems)

    # The secret the page showed once is the one the test event was signed with ...
    assert secret.startswith("whsec_")
    assert json.loads(tested.body)["event_type"] == "webhook.test"
    verify_webhook(tested.body, tested.headers, [secret])
    # The live feed (a WebSocket to the same host) showed it being delivered.
    assert live_state == "Live."
    assert any("webhook.test" in line and "DELIVERED" in line for line in live_lines), live_lines
    # ... and after the rotation, the new one signs, the previous one still does (grace).
    assert rotated.startswith("whsec_")
    assert rotated != secret
    assert "previous secret stops signing" in context
    verify_webhook(second.body, second.headers, [rotated])
    verify_webhook(second.body, second.headers, [secret])
    assert len(second.headers["webhook-signature"].split()) == 2
    # Disabled with its reason shown, enabled again.
    assert "maintenance window" in disabled
    assert "active" in enabled
    # The catalogue: an example as the partner receives it; the snippet is the one served.
    assert json.loads(example)
    assert snippet == (STATIC / "verify_signature.py").read_text()
    assert problems == []


async def test_a_reinsurer_sees_its_bordereaux_and_downloads_them(
    stack: Stack, chrome: webdriver.Chrome, downloads: Path
) -> None:
    _, key = await new_partner(
        stack.base, {"name": "Reinsurance Corp", "kind": "reinsurer", "reinsurer_code": "RE001"}
    )
    report = samples.premium_bordereau()
    report_id = samples.report_id()
    await asyncio.to_thread(
        produce_report, stack.bootstrap, f"{stack.prefix}reinsurance.bordereaux", samples.TREATY, report
    )
    await asyncio.to_thread(
        produce_plain,
        stack.bootstrap,
        f"{stack.prefix}integrations.reinsurance.deliveries",
        samples.TREATY,
        samples.accepted(report_id),
    )
    page = Page(chrome, stack.base)

    def browse() -> tuple[bool, str, str, str]:
        page.open()
        page.sign_in(stack.key)  # the broker first: no bordereaux for it
        page.signed_in()
        broker_tab = bool(page.by_id("tab-bordereaux-item").is_displayed())
        page.by_id("sign-out").click()
        page.sign_in(key)
        page.signed_in()
        page.by_id("tab-bordereaux").click()
        selector = f'#bordereaux-table tbody tr[data-report-id="{report_id}"]'

        def row(driver: webdriver.Chrome) -> str | None:
            found = driver.find_elements(By.CSS_SELECTOR, selector)
            return str(found[0].text) if found and "ACCEPTED" in found[0].text else None

        shown = page.refreshing(row, "bordereaux-search", f"bordereau {report_id}, delivered")
        files = {}
        for fmt, suffix in (("JSON", "json"), ("CSV", "csv")):
            page.driver.find_element(
                By.CSS_SELECTOR, f'button[aria-label="Download {report_id} as {fmt}"]'
            ).click()
            path = downloads / f"{report_id}.{suffix}"
            page.until(lambda _d, p=path: p.is_file() and p.stat().st_size > 0, f"the {fmt} download")
            files[suffix] = path.read_text(encoding="utf-8")
        return broker_tab, shown, files["json"], files["csv"]

    broker_tab, shown, as_json, as_csv = await asyncio.to_thread(browse)
    problems = await asyncio.to_thread(page.console_problems)

    assert broker_tab is False
    assert samples.TREATY in shown
    assert samples.PERIOD in shown
    assert samples.settled_ceded_premium(report) in shown  # the amount, digit for digit
    assert json.loads(as_json)  # a JSON document
    assert report_id in as_json
    lines = as_csv.splitlines()
    assert len(lines) >= 4  # a header and the report's three rows at least
    assert "PN-1" in as_csv
    assert problems == []
