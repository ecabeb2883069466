"""The shared harness of the tests and the benchmarks; each module is named for what
it provides (a sink, a stand-in, a private Postfix, ...).

In tests (pyproject.toml's `pythonpath` puts tests/ on sys.path): `from support import ...`.
Benchmarks import it as `tests.support` (bench/support.py puts the repo root on sys.path).
"""

from .wait import free_port, free_udp_port, port_open, wait_for, wait_port, wait_port_closed

__all__ = ["free_port", "free_udp_port", "port_open", "wait_for", "wait_port",
           "wait_port_closed"]
