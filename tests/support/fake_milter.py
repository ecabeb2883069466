"""A stand-in milter: answers one option negotiation the way libmilter does, then
hangs up (enough for `mailtalk check`'s probe)."""

from __future__ import annotations

import asyncio
import struct


async def fake_milter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A client-connected callback for asyncio.start_server / start_unix_server."""
    try:
        length = struct.unpack(">I", await reader.readexactly(4))[0]
        await reader.readexactly(length)
        reply = b"O" + struct.pack(">III", 6, 0, 0)
        writer.write(struct.pack(">I", len(reply)) + reply)
        await writer.drain()
    finally:
        writer.close()
