"""A small graphql-transport-ws client for tests, over aiohttp's WebSocket client.

The protocol (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md): the client
sends ``connection_init`` (here with the partner key as ``{"authorization": "Bearer ..."}``)
and waits for ``connection_ack``; each operation is a ``subscribe`` with an id, answered by
``next`` messages, then ``complete`` (or one ``error``).  The server may ``ping``; this client
answers ``pong``.  One reader task sorts incoming messages by operation id, so a test awaits
each operation's messages as events (no sleeps)::

    async with GraphqlWs.connect(session, url, key) as ws:
        op = await ws.subscribe("subscription { feed { __typename } }")
        message = await op.receive(timeout_s=30)     # {"type": "next", "payload": {...}}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PROTOCOL = "graphql-transport-ws"


class Closed(Exception):
    """The connection closed; ``code`` is its WebSocket close code."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"the WebSocket closed (code {code})")
        self.code = code


@dataclass
class Operation:
    """One operation: its messages in arrival order (``next``, then ``complete`` or ``error``)."""

    ws: GraphqlWs
    id: str
    messages: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    received: list[dict[str, Any]] = field(default_factory=list)
    """Every message taken with :meth:`receive` so far."""
    done: bool = False

    async def receive(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """The next message of this operation; raises :class:`Closed` once the connection closed."""
        async with asyncio.timeout(timeout_s):
            message = await self.messages.get()
        if message.get("type") == "__closed__":
            self.messages.put_nowait(message)  # every later call sees it too
            raise Closed(message.get("code"))
        self.received.append(message)
        if message["type"] in ("complete", "error"):
            self.done = True
        return message

    async def end(self, timeout_s: float = 60.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Read to this operation's end: (the ``next`` payloads, the errors it ended with).

        The errors are those of an ``error`` message, or of ``next`` payloads that carry errors
        (a subscription that fails while streaming sends its error in a ``next``, then
        ``complete``).
        """
        payloads: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        while True:
            message = await self.receive(timeout_s)
            if message["type"] == "next":
                payloads.append(message["payload"])
                errors.extend(message["payload"].get("errors") or [])
            elif message["type"] == "error":
                errors.extend(message["payload"])
                return payloads, errors
            elif message["type"] == "complete":
                return payloads, errors

    async def complete(self) -> None:
        """Stop the operation from the client's side."""
        if not self.done:
            self.done = True
            await self.ws.send({"id": self.id, "type": "complete"})


class GraphqlWs:
    """One graphql-transport-ws connection (see the module docstring)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.operations: dict[str, Operation] = {}
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        key: str | None,
        *,
        timeout_s: float = 30.0,
        payload: dict[str, Any] | None = None,
    ) -> AsyncIterator[GraphqlWs]:
        """Open, ``connection_init`` with ``key`` (or ``payload``), wait for ``connection_ack``."""
        async with session.ws_connect(
            url, protocols=(PROTOCOL,), timeout=aiohttp.ClientWSTimeout(ws_close=10)
        ) as socket:
            assert socket.protocol == PROTOCOL, socket.protocol
            init = payload if payload is not None else {"authorization": f"Bearer {key}"}
            await socket.send_json({"type": "connection_init", "payload": init})
            async with asyncio.timeout(timeout_s):
                first = await socket.receive()
            if first.type != aiohttp.WSMsgType.TEXT:
                raise Closed(socket.close_code)
            ack = first.json()
            assert ack["type"] == "connection_ack", ack
            client = cls(socket)
            client._reader = asyncio.create_task(client._read())
            try:
                yield client
            finally:
                client._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client._reader

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send_json(message)

    async def subscribe(
        self, query: str, variables: dict[str, Any] | None = None, *, operation_id: str | None = None
    ) -> Operation:
        """Start an operation; its messages arrive on the returned :class:`Operation`."""
        op_id = operation_id or str(next(self._ids))
        operation = self.operations[op_id] = Operation(self, op_id)
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        await self.send({"id": op_id, "type": "subscribe", "payload": payload})
        return operation

    async def _read(self) -> None:
        try:
            async for message in self.socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                document = message.json()
                kind = document.get("type")
                if kind == "ping":
                    await self.send({"type": "pong"})
                    continue
                operation = self.operations.get(document.get("id", ""))
                if operation is not None:
                    operation.messages.put_nowait(document)
        finally:
            self.close_code = self.socket.close_code
            self.closed.set()
            for operation in self.operations.values():
                operation.messages.put_nowait({"type": "__closed__", "code": self.close_code})
