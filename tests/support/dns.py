"""A DNS server on 127.0.0.1 for the tests of mx: and --dnsbl: dnslib answering from a resolver.

`dns_server(resolver)` runs dnslib's UDP server on a free port in a thread and yields its
address as `127.0.0.1:PORT`, the form relay's settings take.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dnslib.server import BaseResolver, DNSServer

from support.sink import free_port


@contextlib.contextmanager
def dns_server(resolver: BaseResolver) -> Iterator[str]:
    """The address of a DNS server answering with *resolver*, stopped at the end."""
    port = free_port()
    server = DNSServer(resolver, port=port, address="127.0.0.1")
    server.start_thread()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()
