"""deploy/systemd and deploy/dns as files: every part has a unit, and the zone example
is valid and says what `mailtalk dns` prints."""

from __future__ import annotations

from pathlib import Path

import dns.rdatatype
import dns.zone

from mailtalk.config import parse_text
from mailtalk.cli.check import zone_line
from mailtalk.discovery import choose_record
from support.systemd_units import UNITS

ROOT = Path(__file__).resolve().parents[2]


def test_every_part_has_a_unit():
    names = {u.name for u in UNITS}
    assert names == {"mailtalk.service", "mailtalk-milter.service",
                     "mailtalk-filter.service", "mailtalk-presence.service",
                     "mailtalk-presence@.service"}


def test_zone_example_is_valid_and_matches_mailtalk_dns():
    text = (ROOT / "deploy/dns/mailtalk.zone.example").read_text()
    zone = dns.zone.from_text(text, origin="example.", relativize=False, check_origin=False)
    found = {}
    for name, rdataset in zone.iterate_rdatasets(dns.rdatatype.TXT):
        texts = [b"".join(r.strings).decode() for r in rdataset]
        found[str(name)] = choose_record(texts).api
    assert found == {"_mailtalk.a.example.": "https://chat.a.example",
                     "_mailtalk.b.example.": "https://chat.a.example"}
    cfg = parse_text('[domains]\nnames = ["a.example", "b.example"]\n'
                     '[presence]\npublic_url = "https://chat.a.example"\n', "t")
    for domain in cfg.domains.names:                # the same record `mailtalk dns` prints
        line = zone_line(domain, cfg.presence.public_url)
        z = dns.zone.from_text(line, origin=".", relativize=False, check_origin=False)
        rd = next(iter(z.iterate_rdatas(dns.rdatatype.TXT)))[2]
        assert choose_record([b"".join(rd.strings).decode()]).api == found[f"_mailtalk.{domain}."]
