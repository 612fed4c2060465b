"""What the service may know about the client of a request, reduced per IP_MODE.

The client address is the one uvicorn resolved: `X-Forwarded-For` is believed only
from the proxies in `FORWARDED_ALLOW_IPS`, so a client cannot forge its own IP.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection

MAX_USER_AGENT = 512


def client_ip(request: HTTPConnection) -> str | None:
    client = request.scope.get("client")
    if not client:
        return None
    try:
        return str(ipaddress.ip_address(client[0]))
    except ValueError:
        return None


def canonical_ip(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as an object, IPv4-mapped IPv6 as IPv4; None if it is not an address."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def reduce_ip(ip: str | None, mode: str) -> str | None:
    """`full` keeps the address, `truncated` keeps the /24 (IPv4) or /48 (IPv6), `none` drops it."""
    if ip is None or mode == "none":
        return None
    if mode == "full":
        return ip
    address = canonical_ip(ip)
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def user_agent(request: HTTPConnection) -> str | None:
    value = request.headers.get("user-agent")
    if not value:
        return None
    return "".join(c for c in value[:MAX_USER_AGENT] if c.isprintable())
