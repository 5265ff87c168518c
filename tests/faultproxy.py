"""An HTTP proxy on 127.0.0.1 that injects S3's faults in front of moto's server.

Per request, drawn from a seeded RNG: answer 503 ``SlowDown`` or 500 ``InternalError``
(with S3's XML error body, as botocore expects), reset the connection without an
answer (RST), or delay the forwarding; otherwise forward the request to the target
and its answer back. It counts what it did, so a test can assert that every kind of
fault really happened. ``down = True`` fails every request (503) until set back.

It runs an aiohttp server on its own event loop in a daemon thread, so it works the
same behind a crawl in the test process or in a subprocess.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

if TYPE_CHECKING:
    from collections.abc import Mapping

ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>{message}</Message><RequestId>fault-{n}</RequestId></Error>"
)
ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}
# Hop-by-hop headers, and those aiohttp sets itself from the body it sends.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "content-length",
        "host",
    }
)


class FaultProxy:
    """Forwards ``http://127.0.0.1:<port>`` to ``target``, injecting faults at the given rates.

    ``rates`` maps a fault (``slowdown``, ``internal``, ``reset``, ``delay``) to the share of
    requests that get it; ``delay_range`` is how long (seconds) a delayed request waits
    before it is forwarded.
    """

    def __init__(
        self,
        target: str,
        rates: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        delay_range: tuple[float, float] = (1.0, 3.0),
    ) -> None:
        self.target = target.rstrip("/")
        self.rates = dict(rates or {})
        unknown = set(self.rates) - {*ERRORS, "reset", "delay"}
        if unknown or sum(self.rates.values()) > 1:
            raise ValueError(f"bad fault rates {self.rates}")
        self.rng = random.Random(seed)
        self.delay_range = delay_range
        self.down = False  # every request answered 503 SlowDown while True
        self.counts: collections.Counter[str] = collections.Counter()
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.runner: web.AppRunner | None = None
        self.session: ClientSession | None = None

    # -- life cycle (from the test's thread) ---------------------------------------------------

    def start(self) -> None:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self.thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self.thread.start()
        started.wait(30)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        if self.loop is not None and self.thread is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- on the proxy's loop --------------------------------------------------------------------

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{path:.*}", self._handle)
        # auto_decompress=False: a gzip body (BODY_STORE_GZIP) is forwarded as sent, not inflated.
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, auto_decompress=False
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.session = ClientSession(
            connector=TCPConnector(limit=0, force_close=False),
            timeout=ClientTimeout(total=120),
            auto_decompress=False,
        )

    async def _stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def _draw(self) -> str | None:
        if self.down:
            return "down"
        x = self.rng.random()
        for fault, rate in self.rates.items():
            if x < rate:
                return fault
            x -= rate
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # the whole request arrives before any fault, as in S3
        fault = self._draw()
        self.counts["requests"] += 1
        if fault is not None:
            self.counts[fault] += 1
        if fault == "down":
            return self._error("slowdown")
        if fault in ERRORS:
            return self._error(fault)
        if fault == "reset":
            self._reset(request)
            return web.Response(status=500)  # never sent: the connection is gone
        if fault == "delay":
            await asyncio.sleep(self.rng.uniform(*self.delay_range))
        return await self._forward(request, body)

    def _error(self, fault: str) -> web.Response:
        status, code, message = ERRORS[fault]
        text = ERROR_BODY.format(code=code, message=message, n=self.counts["requests"])
        return web.Response(
            status=status, body=text.encode(), headers={"Content-Type": "application/xml"}
        )

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Close the client's connection with an RST, no answer, as a dropped link does."""
        transport = request.transport
        if transport is None:
            return
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self.session is not None
        headers: dict[str, Any] = {
            k: v for k, v in request.headers.items() if k.lower() not in _HOP
        }
        headers["Host"] = request.host  # as signed by the client
        async with self.session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":
                response = web.Response(status=upstream.status, headers=out)
                if "Content-Length" in upstream.headers:
                    response.headers["Content-Length"] = upstream.headers["Content-Length"]
                return response
            return web.Response(status=upstream.status, body=data, headers=out)
