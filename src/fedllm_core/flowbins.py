"""Coarse, capture-independent views of flow fields, for templates that must generalise.

Why: on IoT-23 the exact values of ports, byte and packet counts act as fingerprints of the
capture a flow came from (a model learns "1,070 packets = this capture = malicious"), and a
detector keyed on them fails on traffic it never saw. These functions keep what describes the
behaviour of a connection and drop what identifies a recording:

- Ports become the service they name (IANA names of the services IoT traffic uses, and the
  router services IoT botnets attack across families) or, when unnamed, their IANA range:
  ``well-known`` (< 1024), ``registered`` (< 49152), ``ephemeral``. The exact number of an
  unnamed port is noise or a fingerprint.
- Counts (bytes, packets) are exact below 8 (1 SYN or 3 retransmissions is behaviour), then
  log2 bins written as the bin's lower bound: 8, 16, ..., 512, 1k, 2k, ..., 512k, 1M, ... So
  300 and 400 bytes read the same (``256``), 60 and 70 do not (``32`` and ``64``).
- Durations become log2 bins of milliseconds (``0``, ``<1ms``, ``1ms``, ``2ms`` ... ``512ms``),
  then of seconds (``1s``, ``2s``, ... ``512s``, ``1024s`` ...).

Every function maps NaN (Zeek's ``-``, unset) to ``-``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

# Ports IoT traffic uses, named as IANA (or, for the few IoT-specific ones, as their vendors) do,
# plus the router and camera services that IoT botnets (Mirai and its descendants) attack across
# families: a flow to one says what it targets, whichever capture it comes from.
SERVICE_NAMES: Mapping[int, str] = {
    20: "ftp-data",
    21: "ftp",
    22: "ssh",
    23: "telnet",
    25: "smtp",
    53: "dns",
    67: "dhcp",
    68: "dhcp",
    69: "tftp",
    80: "http",
    110: "pop3",
    123: "ntp",
    137: "netbios",
    138: "netbios",
    139: "netbios",
    143: "imap",
    161: "snmp",
    162: "snmp",
    443: "https",
    445: "smb",
    554: "rtsp",
    1883: "mqtt",
    1900: "ssdp",
    2323: "telnet",
    3389: "rdp",
    5353: "mdns",
    5683: "coap",
    6667: "irc",
    7547: "tr-069",
    8080: "http",
    8081: "http",
    8443: "https",
    8883: "mqtt",
    5555: "adb",  # Android debug bridge, open on TV boxes
    37215: "huawei-upnp",  # Huawei HG532 UPnP (CVE-2017-17215)
    52869: "realtek-upnp",  # Realtek SDK miniigd UPnP (CVE-2014-8361)
    49152: "upnp",
    81: "http",
    8000: "http",
    8888: "http",
}
WELL_KNOWN_MAX = 1024  # IANA: 0-1023 well-known, 1024-49151 registered, 49152-65535 ephemeral
REGISTERED_MAX = 49152


def port_range(port: float) -> str:
    """The IANA range of a port: ``well-known``, ``registered`` or ``ephemeral`` (``-``: unset)."""
    if math.isnan(port):
        return "-"
    if port < WELL_KNOWN_MAX:
        return "well-known"
    return "registered" if port < REGISTERED_MAX else "ephemeral"


def port_service(port: float) -> str:
    """The named service of a port, else its IANA range (never the exact number)."""
    if math.isnan(port):
        return "-"
    return SERVICE_NAMES.get(int(port), port_range(port))


def log2_bin(value: float) -> int:
    """-1 for unset, 0 for 0, else k with 2^(k-1) <= value < 2^k (values below 1 count as 1)."""
    if math.isnan(value):
        return -1
    if value <= 0:
        return 0
    return max(math.floor(math.log2(value)), 0) + 1


def _scaled(value: int) -> str:
    for factor, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "k")):
        if value >= factor:
            return f"{value // factor}{suffix}"
    return str(value)


EXACT_BELOW = 8  # small counts (1 SYN, 3 retransmissions) describe behaviour, not a capture


def count_bin(value: float) -> str:
    """A count exactly below 8, else the lower bound of its log2 bin: ``8``, ``16``, ... ``1k``."""
    if not math.isnan(value) and 0 <= value < EXACT_BELOW:
        return str(int(value))
    k = log2_bin(value)
    if k < 0:
        return "-"
    return "0" if k == 0 else _scaled(1 << (k - 1))


def duration_bin(seconds: float) -> str:
    """A duration as the lower bound of its log2 bin in ms below 1 s, in s above."""
    if math.isnan(seconds):
        return "-"
    if seconds <= 0:
        return "0"
    ms = seconds * 1000.0
    if ms < 1:
        return "<1ms"
    k = math.floor(math.log2(ms))
    if k < 10:
        return f"{1 << k}ms"
    return f"{1 << math.floor(math.log2(seconds))}s"  # seconds >= 1.024 here


def bin_bounds(value: float) -> tuple[float, float]:
    """[low, high) of the values ``count_bin`` writes like ``value`` (NaN stays NaN)."""
    if math.isnan(value):
        return math.nan, math.nan
    if value < EXACT_BELOW:
        return float(int(value)), float(int(value)) + 1.0
    k = log2_bin(value)
    return float(1 << (k - 1)), float(1 << k)


COUNT_FIELDS = (
    "orig_bytes",
    "resp_bytes",
    "orig_pkts",
    "resp_pkts",
    "orig_ip_bytes",
    "resp_ip_bytes",
)
_RANGES = ((0, WELL_KNOWN_MAX), (WELL_KNOWN_MAX, REGISTERED_MAX), (REGISTERED_MAX, 65536))


def _other_port(port: float, rng: random.Random) -> float:
    """Another unnamed port of the same IANA range (named ports and unset stay)."""
    if math.isnan(port) or int(port) in SERVICE_NAMES:
        return port
    low, high = next(r for r in _RANGES if r[0] <= port < r[1])
    while True:  # bounded in practice: named ports are a few dozen of each range
        candidate = rng.randrange(low, high)
        if candidate not in SERVICE_NAMES:
            return float(candidate)


def _other_count(value: float, rng: random.Random) -> float:
    low, high = bin_bounds(value)
    if math.isnan(low) or high <= low + 1:
        return value
    return float(rng.randrange(int(low), int(high)))


def jitter_within_bins(record: Mapping[str, object], rng: random.Random) -> dict[str, object]:
    """A copy of ``record`` with each shortcut field moved within what compact@2 shows of it.

    Unnamed ports move within their IANA range, counts within their log2 bin. A detector that
    keys on capture artefacts changes its answer under this edit; one that reads behaviour
    does not (the robustness check in tests/core/test_robustness.py).
    """
    out = dict(record)
    for name in ("id.orig_p", "id.resp_p"):
        if isinstance(out.get(name), float) and out.get("proto") != "icmp":
            out[name] = _other_port(float(out[name]), rng)  # type: ignore[arg-type]
    for name in COUNT_FIELDS:
        if isinstance(out.get(name), float):
            out[name] = _other_count(float(out[name]), rng)  # type: ignore[arg-type]
    return out
