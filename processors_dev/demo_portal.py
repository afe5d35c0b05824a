"""The demo's partners: two registry partners with keys, their endpoints, and the portal.

``processors demo`` runs the API with the apps (on a free local port, with an operator token
made for the run) and, through the operator REST API as an operator would:

* creates **Acme Brokers** (a broker) and **Reinsurance Corp** (the reinsurer ``RE001`` of the
  shipped ``treaties.yaml``: its bordereaux are the ones the demo's treaties cede to it);
* issues one API key for each (shown once, printed by the demo);
* registers the sandbox receivers as their endpoints: Acme Brokers owns the healthy and the
  gone (410) receivers, Reinsurance Corp the slow one that takes every event type.

At the end the demo asks ``/graphql`` with each partner's key what that partner sees, the way
the portal page does; with ``--serve`` it then keeps everything answering until interrupted, so
the portal at ``/portal`` can be opened with the printed keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

__all__ = [
    "DEMO_REGISTRY",
    "PortalDemo",
    "api_settings",
    "register_partners",
    "serve_until_interrupted",
    "show_portal",
]

DEMO_REGISTRY: Final = (
    # name, kind, codes, the sandbox receivers (processors_dev.demo.DEMO_PARTNERS) it owns
    ("Acme Brokers", "broker", {"distributor_code": "ACME01"}, ("acme-brokers", "moved-partner")),
    ("Reinsurance Corp", "reinsurer", {"reinsurer_code": "RE001"}, ("slow-reinsurer",)),
)

_PORTAL_QUERY: Final = """
query DemoView {
  me { name kind }
  endpoints { description active disabledReason health { attempts failures successRate } }
  deliveries(first: 100) { edges { node { status } } pageInfo { hasNextPage } }
  bordereaux(first: 100) { edges { node { reportType treatyNumber periodId rowCount cededTotal } } }
}
"""


@dataclass
class PortalDemo:
    """What the demo made: the API's address, the operator token, and each partner's key."""

    api_url: str
    operator_token: str
    keys: dict[str, str] = field(default_factory=dict)
    """Partner name → its API key (shown once: the demo prints it)."""
    partner_ids: dict[str, str] = field(default_factory=dict)


def api_settings(workdir: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The demo's ``api`` and ``portal`` settings (a free local port, a fresh operator token, the
    query store in ``workdir``) and that token."""
    token = secrets.token_urlsafe(32)
    api = {"enabled": True, "host": "127.0.0.1", "port": 0, "auth_token": token}
    portal = {"database_url": f"sqlite:///{workdir / 'portal.db'}"}
    return api, portal, token


async def register_partners(
    api_url: str,
    token: str,
    receivers: Any,
    behaviours: Mapping[str, tuple[Mapping[str, Any], Sequence[str]]],
) -> PortalDemo:
    """Create the demo's partners, their keys and their endpoints through the operator REST API.

    ``receivers`` is the :class:`~processors_dev.sandbox.partners.PartnerSandbox`;
    ``behaviours`` maps a receiver's name to its behaviour and event filters.
    """
    from processors.webhooks.secrets import generate_secret
    from processors_dev.sandbox.partners import PartnerBehaviour

    demo = PortalDemo(api_url=api_url, operator_token=token)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=api_url, headers=headers) as http:
        for name, kind, codes, owned in DEMO_REGISTRY:
            partner = await _post(http, "/api/v1/partners", {"name": name, "kind": kind, **codes})
            demo.partner_ids[name] = partner["id"]
            issued = await _post(http, f"/api/v1/partners/{partner['id']}/keys", {"name": "demo"})
            demo.keys[name] = issued["key"]
            for receiver in owned:
                behaviour, events = behaviours[receiver]
                secret = generate_secret().get_secret_value()
                receivers.add(receiver, PartnerBehaviour(**behaviour), [secret])
                await _post(
                    http,
                    "/api/v1/webhooks",
                    {
                        "partner_id": partner["id"],
                        "url": receivers.url(receiver),
                        "events": list(events),
                        "secret": secret,
                        "max_concurrency": 1 if behaviour["mode"] == "gone" else 10,
                        "description": receiver,
                    },
                )
                print(
                    f"partner     {name:<17} endpoint {receiver:<15} {behaviour['mode']:<8} "
                    f"subscribed to {', '.join(events)}"
                )
    return demo


async def _post(http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(path, json=body) as response:
        document: dict[str, Any] = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST {path} answered {response.status}: {document.get('message')}")
        return document


async def show_portal(demo: PortalDemo) -> bool:
    """Ask ``/graphql`` with each partner's key what it sees, and print it; True if every
    answer came without errors."""
    ok = True
    print("\npartner portal (GraphQL, each partner with its own key)")
    async with aiohttp.ClientSession(base_url=demo.api_url) as http:
        for name, key in demo.keys.items():
            async with http.post(
                "/graphql", json={"query": _PORTAL_QUERY}, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                document = await response.json()
            errors = document.get("errors")
            if response.status != 200 or errors:
                ok = False
                codes = sorted({str(e.get("extensions", {}).get("code")) for e in errors or []})
                print(f"  {name:<18} answered {response.status} {', '.join(codes)}")
                continue
            data = document["data"]
            statuses: dict[str, int] = {}
            for edge in data["deliveries"]["edges"]:
                statuses[edge["node"]["status"]] = statuses.get(edge["node"]["status"], 0) + 1
            more = "+" if data["deliveries"]["pageInfo"]["hasNextPage"] else ""
            seen = ", ".join(f"{n}{more} {s.lower()}" for s, n in sorted(statuses.items())) or "none"
            print(f"  {name:<18} {data['me']['kind'].lower():<10} latest deliveries: {seen}")
            for endpoint in data["endpoints"]:
                health = endpoint["health"]
                rate = health["successRate"]
                shown = f"{rate:.0%}" if rate is not None else "n/a"
                state = "active" if endpoint["active"] else f"disabled ({endpoint['disabledReason']})"
                print(
                    f"    endpoint {endpoint['description'] or '':<15} {state:<40} "
                    f"{health['attempts']:>4} attempts, success {shown}"
                )
            reports = [edge["node"] for edge in data["bordereaux"]["edges"]]
            if reports:
                print(f"    {len(reports)} bordereaux visible to this reinsurer, e.g.:")
                for report in reports[:3]:
                    print(
                        f"      {report['reportType'].lower():<8} {report['treatyNumber']:<14} "
                        f"{report['periodId']:<8} {report['rowCount']:>3} rows, ceded {report['cededTotal']}"
                    )
    return ok


async def serve_until_interrupted(demo: PortalDemo) -> None:
    """Print where the portal answers and with which keys, then wait for Ctrl-C or SIGTERM."""
    print(f"\nportal      {demo.api_url}/portal  (GraphQL at {demo.api_url}/graphql)")
    for name, key in demo.keys.items():
        print(f"  key of {name:<18} {key}")
    print(f"  operator token (REST API) {demo.operator_token}")
    print("serving until interrupted (Ctrl-C)…")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
