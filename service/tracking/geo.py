"""Country of an IP address, offline: geoip2fast's bundled data, or a MaxMind `.mmdb` file.

Looked up from the full address before it is reduced per IP_MODE, so a truncated or
dropped IP still yields its country. The databases load once per process (about 0.1 s).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

Lookup = Callable[[str], str | None]


@functools.cache
def _geoip2fast() -> Lookup:
    from geoip2fast import GeoIP2Fast

    # The IPv6 file holds the IPv4 ranges too.
    data = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz")

    def lookup(ip: str) -> str | None:
        try:
            code = data.lookup(ip).country_code
        except Exception:  # the library reports some malformed input by raising
            return None
        return code if code and len(code) == 2 and code.isalpha() else None

    return lookup


@functools.cache
def _mmdb(path: str) -> Lookup:
    try:
        import maxminddb
    except ImportError:
        raise RuntimeError(
            "GEOIP_MMDB is set but the maxminddb package is missing: "
            "pip install 'newsletter-service[mmdb]'"
        ) from None
    reader = maxminddb.open_database(path)

    def lookup(ip: str) -> str | None:
        try:
            record = reader.get(ip)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        country = record.get("country") or record.get("registered_country") or {}
        code = country.get("iso_code") if isinstance(country, dict) else None
        return code if isinstance(code, str) and len(code) == 2 else None

    return lookup


def resolver(mmdb_path: str = "") -> Lookup:
    """`lookup(ip) -> "DE" | None`; the MaxMind file when configured, else geoip2fast."""
    return _mmdb(mmdb_path) if mmdb_path else _geoip2fast()
