"""The portal page: its route on the API server, its headers, its GraphQL documents, its snippet.

The route is served by the API server's own application over real HTTP (an ephemeral port);
the page's GraphQL documents are validated against the contract (docs/portal-schema.graphql);
the signature snippet the page shows is run against the signatures the webhooks app sends.
The page in a real browser is tests/browser/test_portal_page.py.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from graphql import build_schema, parse, specified_rules, validate

from processors.api.server import ApiServer
from processors.portal.config import GraphqlSettings
from processors.portal.graphql.limits import cost_rule
from processors.portal.page import PortalPage, content_security_policy
from processors.settings import load_settings
from processors.webhooks.secrets import generate_secret
from processors.webhooks.signing import signature_headers

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "processors" / "portal" / "static"
TOKEN = "operator-token-for-page-tests"
DOCUMENT = re.compile(r"^export const (\w+) = `([^`]*)`;$", re.MULTILINE)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    settings = load_settings(api={"port": 0, "auth_token": TOKEN})
    api = ApiServer(settings, extra_routes=[PortalPage()])
    async with TestClient(TestServer(api.app)) as test_client:
        yield test_client


def documents() -> dict[str, str]:
    found = dict(DOCUMENT.findall((STATIC / "queries.js").read_text()))
    assert len(found) >= 13, sorted(found)
    return found


# -- the route ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/portal", "/portal/"])
async def test_the_page_is_served_without_a_token_with_strict_headers(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert '<script type="module" src="/portal/portal.js">' in await response.text()
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-cache"
    policy = dict(part.partition(" ")[::2] for part in headers["Content-Security-Policy"].split("; "))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["form-action"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    host = f"{client.host}:{client.port}"
    assert policy["connect-src"] == f"'self' ws://{host} wss://{host}"
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert "unsafe-eval" not in headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("portal.js", "text/javascript"),
        ("queries.js", "text/javascript"),
        ("portal.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
        ("verify_signature.py", "text/plain"),
    ],
)
async def test_each_file_has_its_type_and_an_etag_that_answers_304(
    client: Client, name: str, content_type: str
) -> None:
    response = await client.get(f"/portal/{name}")
    assert response.status == 200
    assert response.content_type == content_type
    assert await response.read() == (STATIC / name).read_bytes()
    etag = response.headers["ETag"]
    again = await client.get(f"/portal/{name}", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["Content-Security-Policy"] == response.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "path",
    [
        "/portal/nothing.js",
        "/portal/..%2Fpage.py",
        "/portal/%2E%2E/page.py",
        "/portal/static/index.html",
        "/portal/.hidden",
        "/portal/index.html/x",
    ],
)
async def test_anything_else_under_portal_is_404_with_the_same_headers(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404
    assert "def " not in await response.text()
    if path.count("/") == 2:  # answered by the page's route (the others by the router)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" in response.headers


async def test_the_public_page_leaves_the_other_routes_guarded(client: Client) -> None:
    assert (await client.get("/api/v1/status")).status == 401
    assert (await client.post("/portal", data=b"x")).status == 405


def test_a_host_that_is_not_a_plain_name_is_left_out_of_the_policy() -> None:
    assert "connect-src 'self';" in content_security_policy("evil.example; script-src *")
    assert "connect-src 'self';" in content_security_policy(None)
    assert "ws://[::1]:8080 " in content_security_policy("[::1]:8080")


# -- the page's GraphQL documents -----------------------------------------------------------


def test_every_document_the_page_sends_validates_against_the_contract_within_the_limits() -> None:
    schema = build_schema((ROOT / "docs" / "portal-schema.graphql").read_text())
    limits = GraphqlSettings()  # what a server answers with by default
    rules = [
        *specified_rules,
        cost_rule(max_cost=limits.max_cost, max_page_size=limits.max_page_size, list_size=limits.list_size),
    ]
    for name, source in documents().items():
        errors = validate(schema, parse(source), rules)
        assert errors == [], (name, [e.message for e in errors])


def test_the_page_uses_each_document_and_no_other() -> None:
    script = (STATIC / "portal.js").read_text()
    used = set(re.findall(r"\bQ\.([A-Z_]+)\b", script))
    assert used == set(documents())


def test_the_page_has_no_html_sink_no_eval_and_no_outside_url() -> None:
    script = (STATIC / "portal.js").read_text() + (STATIC / "queries.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in script
    assert not re.search(r"https?://", script)
    html = (STATIC / "index.html").read_text()
    assert " style=" not in html
    assert "<style" not in html
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/portal/portal.js">']
    for attribute, value in re.findall(r"\b(src|href)=\"([^\"]*)\"", html):
        # the one outside link is to read about the scheme; nothing outside is loaded
        assert value.startswith(("/portal/", "#")) or value == "https://www.standardwebhooks.com/", (
            attribute,
            value,
        )
    assert not re.search(r"\son[a-z]+=", html)  # no inline handlers


# -- the signature snippet ------------------------------------------------------------------


@pytest.fixture(scope="module")
def snippet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("portal_verify_snippet", STATIC / "verify_signature.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_snippet_accepts_what_the_webhooks_app_signs_with_either_secret(snippet: ModuleType) -> None:
    verify = cast(Callable[..., bool], snippet.verify_signature)
    new, old = generate_secret().get_secret_value(), generate_secret().get_secret_value()
    body = b'{"webhook_id":"msg_1","event_type":"policy.issued","data":{"premium":"1185.50"}}'
    headers: dict[str, Any] = signature_headers(
        webhook_id="msg_0123456789abcdef0123456789",
        event_type="policy.issued",
        timestamp_s=1_800_000_000,
        body=body,
        secrets=[new, old],
    )
    at = 1_800_000_100.0
    assert verify(body, headers, new, now=at)
    assert verify(body, headers, old, now=at)  # during a rotation
    assert verify(body, {k.upper(): v for k, v in headers.items()}, new, now=at)
    assert not verify(body + b" ", headers, new, now=at)
    assert not verify(body, headers, generate_secret().get_secret_value(), now=at)
    assert not verify(body, headers, new, now=at + 301)  # stale: a replay
    assert not verify(body, headers, new, now=1_800_000_000 - 301.0)
    assert not verify(body, {**headers, "webhook-id": "msg_other"}, new, now=at)
    assert not verify(body, {k: v for k, v in headers.items() if k != "webhook-signature"}, new, now=at)


def test_the_snippet_keys_a_secret_of_another_form_as_text(snippet: ModuleType) -> None:
    verify = cast(Callable[..., bool], snippet.verify_signature)
    secret = "a-partner-chosen-secret-of-32-chars!"
    body = b"{}"
    headers = signature_headers(
        webhook_id="msg_x", event_type="webhook.test", timestamp_s=100, body=body, secrets=[secret]
    )
    assert verify(body, headers, secret, now=100.0)
