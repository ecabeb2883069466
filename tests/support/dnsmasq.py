"""dnsmasq (support/dns.py) started with several TXT records per name and a TTL, on
DNS_HOST; and a real dnspython resolver that counts the queries it sends. For the
tests of DNS itself (tests/e2e): the others inject a StaticResolver (static_dns.py)."""

from __future__ import annotations

from typing import Any

import dns.asyncresolver
import dns.nameserver

from support.dns import Dnsmasq as _BaseDnsmasq, _txt_strings
from support.requires import require_dnsmasq

DNS_HOST = "127.0.14.53"


class Dnsmasq(_BaseDnsmasq):
    """support/dns.py's dnsmasq, with several TXT records per name and a TTL.

    `records` maps a name to a list of TXT values; each value is one string or a
    list of strings (one TXT record made of several character-strings).
    """

    def __init__(self, records: dict[str, list[str | list[str]]], host: str = DNS_HOST,
                 ttl: int = 60) -> None:
        require_dnsmasq()          # skips (not root, no dnsmasq) with the reason
        super().__init__(host)
        self.records = records
        self.ttl = ttl
        self.start()

    @property
    def host(self) -> str:
        return self.address

    def argv(self) -> list[str]:
        args = super().argv() + [f"--local-ttl={self.ttl}"]
        for name, values in self.records.items():
            args += [f"--txt-record={name},{_txt_strings(v)}" for v in values]
        return args


class CountingResolver:
    """A real dnspython resolver that counts the queries it sends (cache tests)."""

    def __init__(self, nameserver_host: str, port: int) -> None:
        self.inner = dns.asyncresolver.Resolver(configure=False)
        self.inner.nameservers = [dns.nameserver.Do53Nameserver(nameserver_host, port)]
        self.inner.cache = None
        self.queries: list[str] = []

    async def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kw: Any) -> Any:
        self.queries.append(str(qname))
        return await self.inner.resolve(qname, rdtype, *args, **kw)
