"""bench/support.py works: smtp-sink counts what a private relay Postfix hands it,
fed by the SASL load generator and by smtp-source (addresses 127.0.10.20-21)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from support.requires import require_postfix, require_tool


_PATH = Path(__file__).resolve().parents[2] / "bench" / "support.py"


def _bench_support():
    # Loaded by path under its own name: `support` is tests/support/ here.
    spec = importlib.util.spec_from_file_location("bench_support", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_generators_relay_and_sink_count(e2e_dir):
    require_postfix()
    require_tool("/usr/sbin/smtp-sink", "postfix")
    bs = _bench_support()
    sink = bs.SmtpSink("127.0.10.20").start()
    relay = bs.relay_instance(e2e_dir, "relay", "127.0.10.21", "a.test", sink,
                              users={"alice@a.test": "pw"})
    try:
        relay.start()
        elapsed = bs.submit_load(relay.address, relay.submission_port, n=12, concurrency=3,
                                 auth=("alice@a.test", "pw"))
        assert elapsed > 0
        bs.wait_drained(relay, sink, 12, timeout=60)
        assert sink.count == 12
        elapsed = bs.smtp_source(relay.address, relay.smtp_port, n=8, concurrency=2)
        assert elapsed > 0
        bs.wait_drained(relay, sink, 20, timeout=60)
        assert sink.count == 20
        # A wrong password is an error, never a silent figure.
        with pytest.raises(RuntimeError, match="session"):
            bs.submit_load(relay.address, relay.submission_port, n=2, concurrency=1,
                           auth=("alice@a.test", "wrong"))
    finally:
        relay.stop()
        sink.stop()
