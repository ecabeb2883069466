"""A hostile sender site slows only its own mails: the real filter and lookup client,
a "tarpit" presence service that accepts connections and never answers, and a healthy
site (a stand-in service answering at once), their `_mailtalk` records from an
injected resolver. 30 tarpit mails and 10 healthy ones are sent together."""

from __future__ import annotations

import asyncio

from mailtalk import headers, online_header
from mailtalk.config import parse_text
from mailtalk.lookup import PresenceLookup
from mailtalk.site_breaker import FAILURES
from support.fake_lookup import MAIL_ID, msg
from support.fake_presence_remote import FakeRemote
from support.filter_harness import start_filter
from support.static_dns import StaticResolver

TARPIT_HOST, HEALTHY_HOST = "127.0.13.40", "127.0.13.41"
CAP = 2


def online_of(content: bytes) -> online_header.SenderOnline:
    fields, _ = headers.split_message(content)
    (value,) = headers.values_of(fields, "X-Sender-Online")
    return online_header.parse_value(value)


async def test_a_tarpit_site_slows_only_its_own_mails() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)                    # reads nothing, answers nothing
    server = await asyncio.start_server(tarpit, TARPIT_HOST, 0)
    tport = server.sockets[0].getsockname()[1]
    healthy = await FakeRemote(HEALTHY_HOST).start()
    cfg = parse_text(f"[filter]\nlookup_timeout = 1.5\nlookup_concurrency_per_domain = {CAP}\n",
                     "test")
    lookup = PresenceLookup(cfg, resolver=StaticResolver({
        "_mailtalk.tarpit.example": [f"v=mailtalk1; api=http://{TARPIT_HOST}:{tport}"],
        "_mailtalk.a.example": [f"v=mailtalk1; api={healthy.base}"]}))
    harness, things = await start_filter(lookup, lookup_timeout=1.5)
    try:
        def mail(account: str, n: int) -> bytes:
            return msg(f"X-Messenger-Account: {account}", f"X-Mail-ID: {MAIL_ID}",
                       f"Subject: {account} {n}")
        # The healthy site has answered before (as a site one hears from does).
        r = await harness.send(["bob@b.example"], mail("alice@a.example", 99))
        assert r.data[0] == 250
        sends = [harness.send(["bob@b.example"], mail("mallory@tarpit.example", n))
                 for n in range(30)]
        sends += [harness.send(["bob@b.example"], mail("alice@a.example", n)) for n in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*sends), 60)
        assert all(r.data[0] == 250 for r in results)
        got = {m.content.split(b"Subject: ")[1].split(b"\r\n")[0].decode(): online_of(m.content)
               for m in harness.sink.got}
        healthy_states = [h.state for s, h in got.items() if s.startswith("alice@")]
        assert healthy_states == ["yes"] * 11              # every healthy mail answered
        tarpit_states = {h.state for s, h in got.items() if s.startswith("mallory@")}
        assert tarpit_states == {"unknown"} and len(got) == 41
        # A site not heard from gets half the cap, then the breaker: few ever reached
        # the tarpit, the others were answered `unknown` at once.
        assert len(accepted) <= FAILURES, len(accepted)
        refused = lookup.breaker.refused
        assert refused["cap"] + refused["open"] >= 30 - FAILURES, refused
    finally:
        await things[0].close()
        things[1].close()
        await lookup.close()
        await healthy.stop()
        for w in accepted:
            w.close()
        server.close()
