"""An injected resolver: TXT answers from a dict, no socket (for unit and component
tests; dnsmasq, a real DNS server, is for tests/e2e)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dns.resolver
import dns.rrset


@dataclass
class _Answer:
    rrset: dns.rrset.RRset


class StaticResolver:
    """dnspython's `resolve(qname, "TXT", ...)` over `{name: [txt, ...]}`; other
    names are NXDOMAIN. Records every query."""

    def __init__(self, records: dict[str, list[str]], ttl: int = 300) -> None:
        self.records = {k.rstrip(".").lower(): v for k, v in records.items()}
        self.ttl = ttl
        self.queries: list[str] = []

    async def resolve(self, qname: Any, rdtype: Any = "TXT", *args: Any, **kw: Any) -> Any:
        name = str(qname).rstrip(".").lower()
        self.queries.append(name)
        texts = self.records.get(name)
        if texts is None:
            raise dns.resolver.NXDOMAIN()
        quoted = ['"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts]
        return _Answer(dns.rrset.from_text_list(name + ".", self.ttl, "IN", "TXT", quoted))
