"""A real DNS server on loopback (dnslib, UDP and TCP on one port) serving test zones.

`DnsServer.zone` maps a name to its TXT records (each a string; strings longer than 255
octets are split into several character-strings, as a zone file must). A name not in it
is NXDOMAIN. The zones can be changed while it runs."""

from __future__ import annotations

import socket
from typing import Any

from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class _Zones(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.txt: dict[str, list[str]] = {}
        self.asked: list[str] = []

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord | None:
        name = str(request.q.qname).rstrip(".").lower()
        self.asked.append(name)
        reply = request.reply()
        if name not in self.txt:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype == QTYPE.TXT:
            for value in self.txt[name]:
                data = value.encode()
                chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
                reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        return reply


class _Quiet(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class DnsServer:
    def __init__(self, zone: dict[str, list[str]] | None = None) -> None:
        self.zones = _Zones()
        self.zones.txt.update({k.lower(): v for k, v in (zone or {}).items()})
        self.port = free_udp_and_tcp_port()
        logger = _Quiet()
        self.servers = [
            DNSServer(self.zones, port=self.port, address="127.0.0.1", logger=logger),
            DNSServer(self.zones, port=self.port, address="127.0.0.1", logger=logger, tcp=True),
        ]

    @property
    def zone(self) -> dict[str, list[str]]:
        return self.zones.txt

    @property
    def address(self) -> str:
        """What `mailer doctor --dns-server` takes."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        for server in self.servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
            server.server.server_close()
