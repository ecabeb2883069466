"""Serving one pymilter milter from a thread of this asyncio process.

The sending milter and the receiving milter (Sendmail) differ in their callbacks, not
in how libmilter is run: register the callbacks, open the socket, tune it
(`milter_socket`), serve in a thread, and stop it promptly. That part lives here.
`Milter.factory` must be set (each milter's `install()`) before `serve()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import Milter

from mailtalk.config import ConfigError
from mailtalk_milter import milter_socket

log = logging.getLogger("mailtalk.milter")

# pymilter's C module, as the Milter package imported it (`import milter` here could
# find our own folder under tools run from the repo root: docs/architecture.md).
milter: Any = Milter.milter

JOIN_TIMEOUT = 10.0            # seconds stop() waits for libmilter's loop to end
POKE_EVERY = 0.05              # seconds between wake-up connections while stopping


def _register(name: str, socket: str, timeout: int) -> None:
    """What Milter.runmilter does up to opening the socket; runmilter itself opens
    and serves in one call, and we must tune the socket in between."""
    # MODBODY: the sending milter removes quoted notices, the receiving one adds a notice.
    milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.MODBODY)
    # An exception that escapes a callback lets the mail pass (libmilter's default
    # would be a tempfail): never hold mail up because of us.
    milter.set_exception_policy(Milter.CONTINUE)
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(socket)
    milter.settimeout(timeout)
    milter.register(name, data=lambda ctx: ctx.getpriv().data(),
                    unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                    negotiate=Milter.negotiate_callback)


class Host:
    """libmilter serving in its thread; `stop()` ends it."""

    def __init__(self, spec: str, thread: threading.Thread, closing: threading.Event) -> None:
        self.spec = spec
        self._thread = thread
        self._closing = closing

    async def stop(self) -> None:
        self._closing.set()
        # smfi_stop() waits for a mutex that libmilter's listener holds across its
        # poll() of up to 5 s; connections of our own end that poll at once.
        stopper = asyncio.ensure_future(asyncio.to_thread(milter.stop))
        while not stopper.done():
            await asyncio.to_thread(milter_socket.poke, self.spec)
            await asyncio.wait({stopper}, timeout=POKE_EVERY)
        await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.warning("libmilter did not stop within %.0fs", JOIN_TIMEOUT)


def serve(*, name: str, spec: str, timeout: int, socket_group: str,
          stop: asyncio.Event, where: str) -> Host:
    """Open `spec` and serve in a thread. `where` names the config key in errors
    (e.g. "/etc/mailtalk/mailtalk.toml: [milter] socket")."""
    loop = asyncio.get_running_loop()
    milter_socket.prepare(spec)
    before = milter_socket.listening_fds()
    _register(name, spec, timeout)
    try:
        milter.opensocket(True)         # True: remove a stale unix socket first
    except milter.error as e:
        raise ConfigError(f"{where}: cannot listen on {spec} "
                          f"({e}; in use by another process?)") from None
    milter_socket.tune(spec, before, socket_group)
    closing = threading.Event()

    def run() -> None:
        try:
            milter.main()
        except Exception:
            log.exception("libmilter stopped with an error")
        finally:
            if not closing.is_set():
                # libmilter's own signal thread ends its loop on SIGTERM/SIGINT/SIGHUP
                # when it, not our main thread, receives the signal: stop it all.
                log.info("libmilter's loop ended: stopping")
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:
                    pass

    thread = threading.Thread(target=run, name="libmilter", daemon=True)
    thread.start()
    return Host(spec, thread, closing)
