"""What one S3 PUT costs the process that sends it, per client library, side by side.

    python -m bench.s3_clients --puts 3000 --size 35000 --concurrency 32 --repeats 3

Each client sends the same PUTs to bench/s3sink.py (its own process; its CPU per PUT is
reported apart) from ``--concurrency`` callers at once: boto3 ``put_object`` from a
thread pool (as the boto3 body store does), the same with checksums and parameter
validation off, and obstore's ``put_async`` on an asyncio loop (as the obstore body store
does), also with an unsigned payload (no SHA-256 of the body in the signature, as AWS
SDKs do over TLS). CPU is this process's own (threads included: boto3's and obstore's Rust runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}


def boto3_client(endpoint: str, concurrency: int, lean: bool) -> Any:
    import boto3
    from botocore.config import Config

    extra: dict[str, Any] = {}
    if lean:
        extra = {"request_checksum_calculation": "when_required", "parameter_validation": False}
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        **CREDENTIALS,
        config=Config(max_pool_connections=concurrency, **extra),
    )


def run_boto3(
    endpoint: str, bucket: str, body: bytes, puts: int, concurrency: int, lean: bool
) -> None:
    client = boto3_client(endpoint, concurrency, lean)
    with ThreadPoolExecutor(concurrency) as pool:
        list(
            pool.map(
                lambda i: client.put_object(
                    Bucket=bucket, Key=f"b/{i:040x}", Body=body, ContentType="text/html"
                ),
                range(puts),
            )
        )
    client.close()


def obstore_store(endpoint: str, bucket: str, unsigned_payload: bool = False) -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=endpoint,
        region="us-east-1",
        unsigned_payload=unsigned_payload,
        access_key_id=CREDENTIALS["aws_access_key_id"],
        secret_access_key=CREDENTIALS["aws_secret_access_key"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


def run_obstore(
    endpoint: str,
    bucket: str,
    body: bytes,
    puts: int,
    concurrency: int,
    unsigned_payload: bool = False,
) -> None:
    import obstore

    store = obstore_store(endpoint, bucket, unsigned_payload)

    async def main() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def put(i: int) -> None:
            async with gate:
                await obstore.put_async(
                    store, f"o/{i:040x}", body, attributes={"Content-Type": "text/html"}
                )

        await asyncio.gather(*(put(i) for i in range(puts)))

    asyncio.run(main())


CLIENTS = ("boto3", "boto3-lean", "obstore", "obstore-unsigned")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=3000)
    parser.add_argument("--size", type=int, default=35_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    args = parser.parse_args()

    from bench.run import OUT
    from bench.servers import s3sink_server

    OUT.mkdir(parents=True, exist_ok=True)
    sink = s3sink_server(OUT / "s3sink.log")
    endpoint = sink.url
    body = os.urandom(args.size)
    rows: dict[str, list[tuple[float, float, float]]] = {c: [] for c in args.clients}
    try:
        for _ in range(args.repeats):
            for client in args.clients:
                bucket = f"b-{uuid.uuid4().hex[:10]}"
                boto3_client(endpoint, 1, True).create_bucket(Bucket=bucket)
                cpu, sink_cpu, wall = (
                    time.process_time(),
                    sink.cpu(),
                    time.monotonic(),
                )
                if client.startswith("obstore"):
                    run_obstore(
                        endpoint,
                        bucket,
                        body,
                        args.puts,
                        args.concurrency,
                        unsigned_payload=client == "obstore-unsigned",
                    )
                else:
                    run_boto3(
                        endpoint, bucket, body, args.puts, args.concurrency, client == "boto3-lean"
                    )
                wall = time.monotonic() - wall
                rows[client].append(
                    (
                        1000 * (time.process_time() - cpu) / args.puts,
                        1000 * (sink.cpu() - sink_cpu) / args.puts,
                        args.puts / wall,
                    )
                )
                boto3_client(endpoint, 1, True).delete_bucket(Bucket=bucket)
    finally:
        sink.stop()
    print(
        f"{args.puts} PUTs of {args.size} bytes from {args.concurrency} concurrent callers, "
        f"medians of {args.repeats}"
    )
    print("| client | client CPU ms/PUT | sink CPU ms/PUT | PUTs/s |\n|---|---|---|---|")
    for client, values in rows.items():
        med = [statistics.median(v[k] for v in values) for k in range(3)]
        print(f"| {client} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
