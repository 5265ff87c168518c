"""A small, fast S3-compatible server for the benchmarks: what a crawl's S3 path costs
the crawler, without measuring an emulator (moto takes ~275 PUTs/s on its own here).

    python -m bench.s3sink --port 9000        # http://127.0.0.1:9000, path-style

Objects live in memory. No signature is checked: any credentials are accepted, but the
access key ids and session tokens that signed requests are counted (for the tests of the
credential chain), and the key ids given with ``--refuse-key`` get 403 InvalidAccessKeyId.
Only what the bench and its clients use is served: create/head/delete
bucket, put/get/head object (aws-chunked bodies decoded), ListObjectsV2 (one page),
DeleteObjects, and ``GET /_stats`` (PUTs, bytes, signers). Its CPU per PUT is reported
beside every row.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import re
import signal

from aiohttp import web

_DELETE_KEY = re.compile(rb"<Key>(.*?)</Key>", re.DOTALL)
_KEY_ID = re.compile(r"Credential=([^/,\s]+)/")


def decode_aws_chunked(data: bytes) -> bytes:
    """The payload of an ``aws-chunked`` body: ``<hex size>[;ext]\\r\\n<data>\\r\\n``... ``0``."""
    out, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


class Sink:
    def __init__(self, refused: frozenset[str] = frozenset()) -> None:
        self.refused = refused
        # bucket -> key -> (bytes, content type, content encoding, ETag)
        self.buckets: dict[str, dict[str, tuple[bytes, str, str | None, str]]] = {}
        self.puts = 0
        self.bytes = 0
        self.signed_by: dict[str, int] = {}  # access key id -> requests
        self.tokens: dict[str, int] = {}  # x-amz-security-token -> requests

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request: aiohttp's low-level server, without an application's router and
        middlewares (they were a third of this server's CPU per PUT)."""
        key_id = _KEY_ID.search(request.headers.get("Authorization", ""))
        if key_id:  # counted, not checked: any credentials but the refused are accepted
            self.signed_by[key_id.group(1)] = self.signed_by.get(key_id.group(1), 0) + 1
            if key_id.group(1) in self.refused:
                return _error(403, "InvalidAccessKeyId")
        token = request.headers.get("x-amz-security-token")
        if token:
            self.tokens[token] = self.tokens.get(token, 0) + 1
        if request.headers.get("Expect", "").lower() == "100-continue":  # boto3's PUTs
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # what aiohttp's router does: the body not begun
        bucket, _, key = request.path[1:].partition("/")
        if bucket == "_stats":
            return await self.stats(request)
        if not key:
            return await self.bucket(request, bucket)
        return await self.object(request, bucket, key)

    async def stats(self, request: web.BaseRequest) -> web.Response:
        return web.json_response(
            {
                "puts": self.puts,
                "bytes": self.bytes,
                "objects": sum(len(b) for b in self.buckets.values()),
                "signed_by": self.signed_by,
                "tokens": self.tokens,
            }
        )

    async def bucket(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        objects = self.buckets.get(name)
        if request.method == "PUT":
            self.buckets.setdefault(name, {})
            return web.Response()
        if objects is None:
            return _error(404, "NoSuchBucket")
        if request.method == "HEAD":
            return web.Response()
        if request.method == "DELETE":
            del self.buckets[name]
            return web.Response(status=204)
        if request.method == "POST" and "delete" in request.query:
            for key in _DELETE_KEY.findall(await request.read()):
                objects.pop(html.unescape(key.decode()), None)
            return _xml("<DeleteResult></DeleteResult>")
        prefix = request.query.get("prefix", "")
        keys = sorted(k for k in objects if k.startswith(prefix))
        contents = "".join(
            f"<Contents><Key>{html.escape(k)}</Key><Size>{len(objects[k][0])}"
            f"</Size><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f"<ETag>&quot;{objects[k][3]}&quot;</ETag>"
            f"</Contents>"
            for k in keys
        )
        return _xml(
            f"<ListBucketResult><Name>{name}</Name><Prefix>{html.escape(prefix)}"
            f"</Prefix><KeyCount>{len(keys)}</KeyCount><MaxKeys>{len(keys)}</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        )

    async def object(self, request: web.BaseRequest, bucket: str, key: str) -> web.StreamResponse:
        objects = self.buckets.get(bucket)
        if objects is None:
            return _error(404, "NoSuchBucket")
        if request.method == "PUT":
            data = await request.content.read()  # no size limit: a crawl's body is any size
            encoding = request.headers.get("Content-Encoding")
            if (encoding and "aws-chunked" in encoding) or request.headers.get(
                "x-amz-content-sha256", ""
            ).startswith("STREAMING-"):
                data = decode_aws_chunked(data)
                encoding = (
                    ",".join(e for e in (encoding or "").split(",") if e.strip() != "aws-chunked")
                    or None
                )
            # A unique ETag per PUT, not S3's MD5 of the bytes: hashing 35 KB was a quarter
            # of this server's CPU per PUT, and no client of the bench checks it.
            self.puts += 1
            self.bytes += len(data)
            etag = f"{self.puts:032x}"
            objects[key] = (
                data,
                request.headers.get("Content-Type", "application/octet-stream"),
                encoding,
                etag,
            )
            return web.Response(headers={"ETag": f'"{etag}"'})
        found = objects.get(key)
        if found is None:
            return _error(404, "NoSuchKey")
        if request.method == "DELETE":
            del objects[key]
            return web.Response(status=204)
        data, content_type, encoding, etag = found
        headers = {"ETag": f'"{etag}"', "Content-Type": content_type}
        if encoding:
            headers["Content-Encoding"] = encoding
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(headers=headers)
        return web.Response(body=data, headers=headers)


def _xml(text: str) -> web.Response:
    return web.Response(
        text='<?xml version="1.0" encoding="UTF-8"?>\n' + text, content_type="application/xml"
    )


def _error(status: int, code: str) -> web.Response:
    return web.Response(
        status=status,
        content_type="application/xml",
        text=f"<Error><Code>{code}</Code><Message>{code}</Message></Error>",
    )


async def serve(port: int, refused: frozenset[str] = frozenset()) -> None:
    # auto_decompress off: Content-Encoding of a PUT is the object's metadata, not transport.
    runner = web.ServerRunner(
        web.Server(Sink(refused).handle, access_log=None, auto_decompress=False)
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_address=True).start()
    port = runner.addresses[0][1]  # the one bound, if ``port`` was 0
    # The first line is for whoever started us with --port 0 (bench/servers.py reads it).
    print(f"listening on 127.0.0.1:{port}", flush=True)
    print(f"S3 sink on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9000, help="0: any free port (printed)")
    parser.add_argument(
        "--refuse-key",
        action="append",
        default=[],
        help="answer 403 InvalidAccessKeyId to requests this key id signed",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, frozenset(args.refuse_key)))


if __name__ == "__main__":
    main()
