"""A TCP proxy that holds each direction's bytes for a fixed delay before passing them on:
the link latency of a remote site, where the kernel has no netem qdisc. Run as
`python delayproxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(forward())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((time.monotonic() + delay, None))
    with contextlib.suppress(ConnectionError):
        await sender


async def main(host: str, port: int, target_host: str, target_port: int, delay: float) -> None:
    async def handle(reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer, delay), pipe(up_reader, writer, delay))

    server = await asyncio.start_server(handle, host, port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    h, p, th, tp, ms = sys.argv[1:6]
    asyncio.run(main(h, int(p), th, int(tp), float(ms) / 1e3))
