"""The partner portal's page at ``/portal``: static files, public, with strict security headers.

=====================================  ======  ===============================================
route                                  auth    answers
=====================================  ======  ===============================================
``GET /portal``, ``GET /portal/``      none    the page (``index.html``)
``GET /portal/{name}``                 none    one of the page's files; 404 for anything else
=====================================  ======  ===============================================

The page holds no data: it asks ``/graphql`` for everything, with the partner key the user
types in (kept in the browser tab's ``sessionStorage``).  Its routes are therefore mounted
without the API's Bearer guard (:attr:`PortalPage.public`).

The files are read once, when the provider is built, from the package's ``static`` directory
(``processors/portal/static``): a request names a file of that fixed set or gets 404, so no
path ever reaches the file system.  Every answer carries:

* ``Content-Security-Policy``: only this origin's scripts, styles, images and connections
  (``ws``/``wss`` to the same host, for the live feed); no inline script or style, no plugins,
  no framing, no ``<base>``, no native form submission (every form is handled by the script, so
  a key typed before the script ran never ends up in a URL), and Trusted Types required, so an
  HTML sink (``innerHTML``) throws instead of rendering data as markup;
* ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  ``X-Frame-Options: DENY``, ``Cross-Origin-Opener-Policy`` and ``-Resource-Policy``
  ``same-origin``, a ``Permissions-Policy`` that turns off what the page does not use;
* ``Cache-Control: no-cache`` with a strong ``ETag`` (a new build's files are fetched again,
  an unchanged file costs a 304).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

__all__ = ["PORTAL_PATH", "PortalPage", "content_security_policy"]

PORTAL_PATH: Final = "/portal"

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".py": "text/plain; charset=utf-8",
}
_INDEX: Final = "index.html"
_HOST: Final = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")
"""A Host header safe to repeat in the policy (a name or IP address, an optional port)."""

_BASE_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cache-Control": "no-cache",
}


def content_security_policy(host: str | None) -> str:
    """The page's policy; ``host`` (the request's Host header) adds ``ws://`` and ``wss://``
    to it for the live feed when it is a plain host name or address (else only ``'self'``)."""
    connect = "'self'"
    if host is not None and _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "font-src 'self'",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        )
    )


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load(package: str, directory: str) -> dict[str, _File]:
    """Every file of ``directory`` in ``package`` whose type the page serves, by name."""
    files: dict[str, _File] = {}
    for entry in resources.files(package).joinpath(directory).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        content_type = _CONTENT_TYPES.get(suffix)
        if content_type is None or not entry.is_file() or entry.name.startswith("."):
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[entry.name] = _File(body, content_type, etag)
    if _INDEX not in files:
        raise FileNotFoundError(f"the portal page has no {_INDEX} in {package}/{directory}")
    return files


class PortalPage:
    """The route provider of the page (see :class:`~processors.api.server.RouteProvider`).

    ``public = True``: the API server mounts these routes without its Bearer guard (the page is
    public; what it shows comes from ``/graphql``, which checks the key).  Reads its files when
    built (no network).
    """

    public: Final = True

    def __init__(self, package: str = "processors.portal", directory: str = "static") -> None:
        self._files = _load(package, directory)

    @property
    def names(self) -> frozenset[str]:
        """The files served under ``/portal/``."""
        return frozenset(self._files)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PORTAL_PATH, self.index),
            web.get(PORTAL_PATH + "/", self.index),
            web.get(PORTAL_PATH + "/{name}", self.asset),
        ]

    async def index(self, request: web.Request) -> web.Response:
        return self._answer(request, self._files[_INDEX])

    async def asset(self, request: web.Request) -> web.Response:
        found = self._files.get(request.match_info["name"])
        if found is None:
            return self._not_found(request)
        return self._answer(request, found)

    def _headers(self, request: web.Request) -> dict[str, str]:
        return {**_BASE_HEADERS, "Content-Security-Policy": content_security_policy(request.host)}

    def _answer(self, request: web.Request, found: _File) -> web.Response:
        headers = {**self._headers(request), "ETag": found.etag}
        offered = request.headers.get("If-None-Match", "")
        if found.etag in (tag.strip() for tag in offered.split(",")):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = found.content_type
        return web.Response(body=found.body, headers=headers)

    def _not_found(self, request: web.Request) -> web.Response:
        headers = {**self._headers(request), "Content-Type": "text/plain; charset=utf-8"}
        return web.Response(status=404, body=b"not found\n", headers=headers)
