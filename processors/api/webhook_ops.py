"""Operator routes for partner webhook deliveries: attempts, redelivery and recovery.

=======================================================================  ====================================
route                                                                    answers
=======================================================================  ====================================
``GET /api/v1/webhooks/{id}/attempts?status=&since=&limit=``             200 list of attempts, newest first
``GET /api/v1/webhooks/{id}/messages/{webhook_id}/attempts``             200 the message's attempts, 404
``POST /api/v1/webhooks/{id}/messages/{webhook_id}/redeliver``           202 redelivery report, 404
``POST /api/v1/webhooks/{id}/recover``  body ``{"since": <ISO-8601>}``   202 redelivery report
=======================================================================  ====================================

Mounted on :class:`processors.api.server.ApiServer` through ``extra_routes`` (behind its Bearer
token)::

    ops = WebhookOpsRoutes.create(settings.bootstrap_servers, client_overrides=settings.client_overrides)
    ApiServer(settings, extra_routes=[ops])

Answers come from the delivery log (``integrations.webhook.deliveries``) read into memory.
Before answering, a route waits (``catch_up_timeout_s`` at most) until that view holds every
record the log held when the request came in; the header ``X-Caught-Up: true|false`` (and
``caught_up`` in the POST answers) says whether it got there.  A bad query or body is 400 with
the reason; times must carry a timezone.  Redelivery and recovery produce operator copies of
the dispatch records (``x-redelivery: operator``), which the webhooks app delivers like any
other: ``recover`` takes every message of the endpoint whose latest attempt failed at or after
``since``, once each.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from processors.adapters import jsonwire
from processors.errors import BrokerError
from processors.webhooks.attempts import (
    DEFAULT_MAX_ATTEMPTS_PER_ENDPOINT,
    STATUSES,
    AttemptsFeed,
    AttemptsView,
    JobRef,
    Redeliverer,
    RedeliveryReport,
)

__all__ = [
    "ATTEMPTS_PATH",
    "CAUGHT_UP_HEADER",
    "DEFAULT_DELIVERIES_TOPIC",
    "DEFAULT_DISPATCH_TOPIC",
    "MESSAGE_ATTEMPTS_PATH",
    "RECOVER_PATH",
    "REDELIVER_PATH",
    "WebhookOpsRoutes",
]

log = logging.getLogger(__name__)

ATTEMPTS_PATH: Final = "/api/v1/webhooks/{id}/attempts"
MESSAGE_ATTEMPTS_PATH: Final = "/api/v1/webhooks/{id}/messages/{webhook_id}/attempts"
REDELIVER_PATH: Final = "/api/v1/webhooks/{id}/messages/{webhook_id}/redeliver"
RECOVER_PATH: Final = "/api/v1/webhooks/{id}/recover"
CAUGHT_UP_HEADER: Final = "X-Caught-Up"
DEFAULT_DELIVERIES_TOPIC: Final = "integrations.webhook.deliveries"
DEFAULT_DISPATCH_TOPIC: Final = "integrations.webhooks.dispatch"

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1_000
_MAX_BODY_BYTES: Final = 4_096
# A "+hh:mm" offset in a query string arrives as " hh:mm" when the caller did not encode the "+".
_UNENCODED_PLUS = re.compile(r"(\d) (\d\d(?::?\d\d)?)$")


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _error(status: int, error: str, message: str, *, caught_up: bool | None = None) -> web.Response:
    headers = {} if caught_up is None else {CAUGHT_UP_HEADER: _flag(caught_up)}
    return web.json_response({"error": error, "message": message}, status=status, headers=headers)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _parse_since(text: str | None, *, required: bool) -> datetime | None:
    """An ISO-8601 time with a timezone (``Z`` or an offset); raises _BadRequest otherwise."""
    if text is None or text == "":
        if required:
            raise _BadRequest("since is required (ISO-8601 with a timezone, e.g. 2025-01-31T00:00:00Z)")
        return None
    try:
        value = datetime.fromisoformat(_UNENCODED_PLUS.sub(r"\1+\2", text.strip()))
    except ValueError as exc:
        raise _BadRequest("since is not an ISO-8601 time") from exc
    if value.utcoffset() is None:
        raise _BadRequest("since must carry a timezone (Z or an offset such as +00:00)")
    return value


def _parse_limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError as exc:
        raise _BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise _BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def _parse_status(text: str | None) -> str | None:
    if text is None or text == "":
        return None
    if text not in STATUSES:
        raise _BadRequest(f"status must be one of {', '.join(sorted(STATUSES))}")
    return text


class WebhookOpsRoutes:
    """The operator routes (a route provider for ``ApiServer(extra_routes=...)``).

    Owns ``feed`` and ``redeliverer``: ``start()`` starts both, ``stop()`` stops both.
    ``catch_up_timeout_s`` bounds how long a request waits for the view to be fresh.
    """

    def __init__(
        self,
        view: AttemptsView,
        feed: AttemptsFeed,
        redeliverer: Redeliverer,
        *,
        catch_up_timeout_s: float = 2.0,
    ) -> None:
        self.view = view
        self.feed = feed
        self.redeliverer = redeliverer
        self.catch_up_timeout_s = catch_up_timeout_s

    @classmethod
    def create(
        cls,
        bootstrap_servers: str,
        *,
        deliveries_topic: str = DEFAULT_DELIVERIES_TOPIC,
        dispatch_topic: str = DEFAULT_DISPATCH_TOPIC,
        client_overrides: Mapping[str, str] | None = None,
        max_attempts_per_endpoint: int = DEFAULT_MAX_ATTEMPTS_PER_ENDPOINT,
        catch_up_timeout_s: float = 2.0,
    ) -> WebhookOpsRoutes:
        """Routes over a new view of ``deliveries_topic`` that redeliver to ``dispatch_topic`` (no I/O)."""
        view = AttemptsView(max_attempts_per_endpoint=max_attempts_per_endpoint)
        feed = AttemptsFeed(bootstrap_servers, deliveries_topic, view, client_overrides=client_overrides)
        redeliverer = Redeliverer(bootstrap_servers, dispatch_topic, client_overrides=client_overrides)
        return cls(view, feed, redeliverer, catch_up_timeout_s=catch_up_timeout_s)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(ATTEMPTS_PATH, self.attempts, allow_head=False),
            web.get(MESSAGE_ATTEMPTS_PATH, self.message_attempts, allow_head=False),
            web.post(REDELIVER_PATH, self.redeliver),
            web.post(RECOVER_PATH, self.recover),
        ]

    async def start(self) -> None:
        await self.redeliverer.start()
        try:
            await self.feed.start()
        except BaseException:
            await self.redeliverer.stop()
            raise

    async def stop(self) -> None:
        try:
            await self.feed.stop()
        finally:
            await self.redeliverer.stop()

    # ------------------------------------------------------------------------ handlers

    async def attempts(self, request: web.Request) -> web.Response:
        sub_id = request.match_info["id"]
        try:
            status = _parse_status(request.query.get("status"))
            since = _parse_since(request.query.get("since"), required=False)
            limit = _parse_limit(request.query.get("limit"))
        except _BadRequest as exc:
            return _error(400, "bad_request", exc.message)
        caught_up = await self._catch_up()
        found = self.view.for_endpoint(sub_id, status=status, since=since, limit=limit)
        return self._list([a.to_json() for a in found], caught_up)

    async def message_attempts(self, request: web.Request) -> web.Response:
        sub_id, webhook_id = request.match_info["id"], request.match_info["webhook_id"]
        caught_up = await self._catch_up()
        found = self.view.for_message(sub_id, webhook_id)
        if not found:
            return _unknown_message(caught_up)
        return self._list([a.to_json() for a in found], caught_up)

    async def redeliver(self, request: web.Request) -> web.Response:
        sub_id, webhook_id = request.match_info["id"], request.match_info["webhook_id"]
        caught_up = await self._catch_up()
        latest = self.view.latest(sub_id, webhook_id)
        if latest is None:
            return _unknown_message(caught_up)
        return await self._redeliver(sub_id, {latest.job: webhook_id}, caught_up)

    async def recover(self, request: web.Request) -> web.Response:
        sub_id = request.match_info["id"]
        try:
            since = _parse_since(await _since_from_body(request), required=True)
        except _BadRequest as exc:
            return _error(400, "bad_request", exc.message)
        assert since is not None
        caught_up = await self._catch_up()
        failed = self.view.failed_since(sub_id, since)
        return await self._redeliver(sub_id, {m.job: m.webhook_id for m in failed}, caught_up)

    # ------------------------------------------------------------------------ helpers

    async def _catch_up(self) -> bool:
        return await self.feed.wait_caught_up(self.catch_up_timeout_s)

    def _list(self, items: list[dict[str, Any]], caught_up: bool) -> web.Response:
        return web.json_response(items, headers={CAUGHT_UP_HEADER: _flag(caught_up)})

    async def _redeliver(self, sub_id: str, jobs: Mapping[JobRef, str], caught_up: bool) -> web.Response:
        try:
            report = await self.redeliverer.redeliver(list(jobs), expect_subscription=sub_id)
        except BrokerError as exc:
            log.error("webhook redelivery for %s failed: %s", sub_id, exc)
            return _error(
                503, "broker_unavailable", "the dispatch records could not be copied", caught_up=caught_up
            )
        log.info(
            "webhook redelivery for %s: %d copied, %d missing",
            sub_id,
            report.redelivered_count,
            report.missing_count,
        )
        return web.json_response(
            _report_json(report, jobs, caught_up), status=202, headers={CAUGHT_UP_HEADER: _flag(caught_up)}
        )


def _unknown_message(caught_up: bool) -> web.Response:
    return _error(404, "not_found", "no such message for this endpoint", caught_up=caught_up)


def _report_json(report: RedeliveryReport, jobs: Mapping[JobRef, str], caught_up: bool) -> dict[str, Any]:
    """The report, each missing or mismatched dispatch record named with its message."""
    body = report.to_json()
    body["missing_jobs"] = [{**job.to_json(), "webhook_id": jobs.get(job)} for job in report.missing]
    body["mismatched_jobs"] = [{**job.to_json(), "webhook_id": jobs.get(job)} for job in report.mismatched]
    body["caught_up"] = caught_up
    return body


async def _since_from_body(request: web.Request) -> str | None:
    if request.content_length is not None and request.content_length > _MAX_BODY_BYTES:
        raise _BadRequest(f"the body exceeds {_MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > _MAX_BODY_BYTES:
        raise _BadRequest(f"the body exceeds {_MAX_BODY_BYTES} bytes")
    try:
        body = jsonwire.loads_strict(raw, decimals=False)
    except jsonwire.JsonRejected as exc:
        raise _BadRequest('the body must be JSON: {"since": "<ISO-8601 time with a timezone>"}') from exc
    if not isinstance(body, dict):
        raise _BadRequest('the body must be a JSON object: {"since": "<ISO-8601 time with a timezone>"}')
    since = body.get("since")
    if since is not None and not isinstance(since, str):
        raise _BadRequest("since must be a string (ISO-8601 with a timezone)")
    return since
