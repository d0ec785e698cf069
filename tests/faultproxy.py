"""A fault-injecting TCP proxy on 127.0.0.1 for tests: slow links and connection resets."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

CHUNK = 64 * 1024


@dataclass
class FaultProxy:
    """Forward 127.0.0.1:port to target_port, injecting faults; use as a context manager.

    delay: seconds slept before forwarding each chunk, either way (a slow link).
    reset_after: once a connection has sent this many bytes upstream, reset it (TCP RST)...
    resets: ...for this many connections (None: every one), then forward normally.
    lifetime: the proxy stops itself after this many seconds, whatever the test does.
    """

    target_port: int
    delay: float = 0.0
    reset_after: int | None = None
    resets: int | None = None
    lifetime: float = 120.0
    port: int = 0
    connections: int = 0
    reset_times: list[float] = field(default_factory=list)  # monotonic time of each injected reset
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stopped: asyncio.Event | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="faultproxy")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        tasks: set[asyncio.Task] = set()

        async def on_connect(reader, writer):
            tasks.add(asyncio.current_task())
            try:
                await self._pipe(reader, writer)
            except asyncio.CancelledError:
                pass  # stopping
            finally:
                tasks.discard(asyncio.current_task())

        server = await asyncio.start_server(on_connect, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await asyncio.wait_for(self._stopped.wait(), self.lifetime)
        except asyncio.TimeoutError:
            pass
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pipe(self, client_r, client_w) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(client_w)
            return
        upstream = asyncio.create_task(self._copy(client_r, server_w, count_for_reset=True))
        downstream = asyncio.create_task(self._copy(server_r, client_w, count_for_reset=False))
        try:
            done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            if upstream in done and upstream.result() == "reset":
                _reset(client_w)
                _reset(server_w)
            else:
                await asyncio.wait({upstream, downstream}, timeout=self.lifetime)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()

    async def _copy(self, reader, writer, count_for_reset: bool) -> str:
        sent = 0
        while chunk := await reader.read(CHUNK):
            if self.delay:
                await asyncio.sleep(self.delay)
            sent += len(chunk)
            if count_for_reset and self._should_reset(sent):
                return "reset"
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return "eof"

    def _should_reset(self, sent: int) -> bool:
        if self.reset_after is None or sent < self.reset_after:
            return False
        if self.resets is not None and len(self.reset_times) >= self.resets:
            return False
        self.reset_times.append(time.monotonic())
        return True


def _reset(writer) -> None:
    """Close with SO_LINGER 0, so that the peer gets a TCP RST instead of a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
