"""The shared harness for end-to-end tests and benchmarks (engineer "infra").

In tests (tests/ is on sys.path through conftest.py): `from support import ...`.
Benchmarks import it as `tests.support` (bench/support.py puts the repo root on sys.path).
"""

from .wait import free_port, free_udp_port, port_open, wait_for, wait_port, wait_port_closed

__all__ = ["free_port", "free_udp_port", "port_open", "wait_for", "wait_port",
           "wait_port_closed"]
