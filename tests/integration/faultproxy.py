"""A TCP proxy that misbehaves on command: the network between an app and a service.

Modes, switched at any time (new and open connections follow the new mode):

* ``pass``: bytes flow both ways;
* ``delay``: every chunk waits ``delay_s`` before it is forwarded (latency spikes);
* ``reset``: every connection is closed at once with a TCP RST, on both sides;
* ``blackhole``: connections are accepted and nothing is forwarded or answered, nothing closed
  (packets dropped, no RST): only the client's own timeouts get it out.  What was held back
  moves on once the mode changes, as a network that comes back delivers what TCP resends.

The proxy runs on the event loop that enters it (``async with FaultProxy(...)``), or on a
loop of its own in a thread (``with FaultProxy(...).in_thread()``) for clients whose traffic
must not wait on the test's loop (a broker's, which the test's own blocking calls would stall).
``set()`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Literal

Mode = Literal["pass", "delay", "reset", "blackhole"]

__all__ = ["FaultProxy", "Mode"]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


class FaultProxy:
    """Forwards ``port`` (0: any free port) on 127.0.0.1 to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.accepted = 0
        self.reset = 0
        self._port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, as a Kafka client's bootstrap servers."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def set(self, mode: Mode, *, delay_s: float = 0.0) -> None:
        self.mode, self.delay_s = mode, delay_s

    async def _held(self) -> None:
        while self.mode == "blackhole":
            await asyncio.sleep(0.1)  # dropped for now: nothing moves, nothing closes

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: asyncio.StreamWriter
    ) -> None:
        """``reader`` → ``writer``; ``source`` is the writer of ``reader``'s own connection."""
        try:
            while True:
                chunk = await reader.read(65536)
                await self._held()  # a FIN is held back too
                if not chunk:
                    break
                if self.mode == "reset":  # an open connection is cut too, mid-exchange
                    self.reset += 1
                    _reset(writer)
                    _reset(source)
                    return
                if self.mode == "delay":
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "reset":
            self.reset += 1
            _reset(client_writer)
            return
        await self._held()  # accepted, never answered
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pipe(client_reader, server_writer, client_writer),
            self._pipe(server_reader, client_writer, server_writer),
        )

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._track, "127.0.0.1", self._port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[FaultProxy]:
        """Serve on an event loop of the proxy's own, in a daemon thread, while the block runs."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.__aenter__(), loop).result(30)
            try:
                yield self
            finally:
                asyncio.run_coroutine_threadsafe(self.__aexit__(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()
