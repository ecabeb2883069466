"""Slow and silent clients for the flood tests: raw TCP connections from a chosen
loopback address that send nothing, a partial request or a byte now and then, each
watched for the moment the server closes it."""

from __future__ import annotations

import asyncio
import time


class Held:
    """One raw connection; `closed_after` is the seconds from its opening to the
    server's close (EOF or reset), None while it is open."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()
        self.closed_after: float | None = None
        self.received = b""
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while True:
                data = await self.reader.read(4096)
                if not data:
                    break
                self.received += data
        except (ConnectionError, OSError):
            pass
        self.closed_after = time.monotonic() - self.opened

    async def drip(self, data: bytes, every: float) -> None:
        """Send `data` a byte at a time, `every` seconds apart, until closed."""
        for b in data:
            if self.closed_after is not None:
                return
            try:
                self.writer.write(bytes([b]))
                await self.writer.drain()
            except (ConnectionError, OSError):
                return
            await asyncio.sleep(every)

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def hold(host: str, port: int, source: str, first: bytes = b"") -> Held:
    """A connection from `source` (a loopback address) that sends `first`, then nothing."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    if first:
        writer.write(first)
    return Held(reader, writer)


async def hold_many(host: str, port: int, source: str, n: int,
                    first: tuple[bytes, ...] = (b"",)) -> list[Held]:
    """`n` connections from `source`, in order; the i-th sends first[i % len(first)]."""
    return [await hold(host, port, source, first[i % len(first)]) for i in range(n)]


async def close_all(held: list[Held]) -> None:
    await asyncio.gather(*(h.close() for h in held))
