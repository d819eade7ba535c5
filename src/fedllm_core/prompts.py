"""Prompt templates: how one IoT-23 flow record becomes the text a language model classifies.

Rules:
- A template is named and versioned (``compact@1``). Its text for a given record never changes
  within a version: any change to the wording is a new version, because the model fingerprint
  carries name and version and a model trained on one wording is not valid for another.
- Templates read only fields that describe the connection itself: proto, service, conn_state,
  history, ports, durations, byte and packet counts. They never read ``ts``, ``uid``,
  ``id.orig_h``/``id.resp_h``, ``tunnel_parents``, ``label``, ``detailed-label`` or ``capture``:
  addresses and timestamps identify the capture (and with it, mostly, the label), and
  ``tunnel_parents`` is ``(empty)`` only in the 2018 captures.
- Zeek's ``history`` is case-sensitive (upper case = originator, lower case = responder) while
  the default tokenizer is uncased, so templates spell the two directions out separately.
- ``max_tokens`` is the template's budget: the most word-piece tokens (with [CLS]/[SEP]) its
  text takes under a BERT uncased tokenizer on IoT-23; a test checks it on the shipped data.
  ``choose_template("auto", max_tokens=n)`` picks the richest template within a device's budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedllm_core.flowbins import count_bin, duration_bin, port_service

if TYPE_CHECKING:
    import numpy.typing as npt

    from fedllm_core.data.table import FlowTable

Record = Mapping[str, object]
AUTO = "auto"
# The fields a template may read; everything else in a record is ignored (see module rules).
PROMPT_FIELDS: tuple[str, ...] = (
    "proto",
    "service",
    "conn_state",
    "history",
    "id.orig_p",
    "id.resp_p",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "missed_bytes",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
)
# Zeek conn_state meanings (Zeek's conn.log documentation), for the verbose template.
CONN_STATES: Mapping[str, str] = {
    "S0": "attempt seen, no reply",
    "S1": "established, not terminated",
    "SF": "normal establishment and termination",
    "REJ": "attempt rejected",
    "S2": "established, originator close attempt, no reply",
    "S3": "established, responder close attempt, no reply",
    "RSTO": "established, originator aborted",
    "RSTR": "responder sent a reset",
    "RSTOS0": "originator sent SYN then reset, no SYN-ACK",
    "RSTRH": "responder sent SYN-ACK then reset, no SYN",
    "SH": "originator sent SYN then FIN, no SYN-ACK",
    "SHR": "responder sent SYN-ACK then FIN, no SYN",
    "OTH": "no SYN seen, midstream traffic",
}


@dataclass(frozen=True)
class Template:
    """A named, versioned way of writing a flow record as text."""

    name: str
    version: int
    max_tokens: int  # budget: most BERT word-piece tokens incl. [CLS]/[SEP] on IoT-23
    description: str
    format_record: Callable[[Record], str]
    fields: tuple[str, ...] = PROMPT_FIELDS  # the columns `render` hands to format_record

    @property
    def key(self) -> str:
        """``name@version``: what goes into the model fingerprint."""
        return f"{self.name}@{self.version}"

    def __call__(self, record: Record) -> str:
        return self.format_record(record)


# ---- value formatting shared by the templates ---------------------------------------------


def _num(record: Record, name: str) -> float:
    value = record.get(name, math.nan)
    if isinstance(value, str):
        return math.nan if value in ("-", "") else float(value)
    return float(value) if isinstance(value, int | float) else math.nan


def _text(record: Record, name: str) -> str:
    value = record.get(name, "-")
    return str(value) if value not in ("", None) else "-"


def count(value: float) -> str:
    """Counts: exact below 10,000, then thousands/millions (``26k``, ``3M``); ``-`` if unset."""
    if math.isnan(value):
        return "-"
    if value < 10_000:
        return str(int(value))
    if value < 10_000_000:
        return f"{round(value / 1000)}k"
    return f"{round(value / 1_000_000)}M"


def duration(seconds: float) -> str:
    """Durations: whole ms below 1 s, whole s below 10 min, then whole minutes."""
    if math.isnan(seconds):
        return "-"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 600:
        return f"{round(seconds)}s"
    return f"{round(seconds / 60)}min"


def port_class(port: float) -> str:
    """The originator port's range (its exact value is noise: mostly a random ephemeral port)."""
    if math.isnan(port):
        return "-"
    if port < 1024:
        return str(int(port))
    return "registered" if port < 49152 else "dynamic"


def history_parts(history: str) -> tuple[str, str]:
    """Zeek history split by direction: (originator letters, responder letters), lower case."""
    if history == "-":
        return "-", "-"
    orig = "".join(c for c in history if c.isupper()).lower() or "-"
    resp = "".join(c for c in history if c.islower()) or "-"
    return orig, resp


def _port(record: Record, name: str) -> str:
    value = _num(record, name)
    return "-" if math.isnan(value) else str(int(value))


# ---- the templates ------------------------------------------------------------------------


def _compact(r: Record) -> str:
    orig_hist, resp_hist = history_parts(_text(r, "history"))
    return " ".join(
        (
            _text(r, "proto"),
            _text(r, "service"),
            _text(r, "conn_state"),
            f"{orig_hist}/{resp_hist}",
            _port(r, "id.resp_p"),
            port_class(_num(r, "id.orig_p")),
            duration(_num(r, "duration")),
            f"{count(_num(r, 'orig_bytes'))}/{count(_num(r, 'resp_bytes'))}b",
            f"{count(_num(r, 'orig_pkts'))}/{count(_num(r, 'resp_pkts'))}p",
            f"{count(_num(r, 'orig_ip_bytes'))}/{count(_num(r, 'resp_ip_bytes'))}ip",
        )
    )


def _endpoints_v2(r: Record) -> tuple[str, ...]:
    """Responder then originator port as services; ICMP "ports" are Zeek's type and code."""
    if _text(r, "proto") == "icmp":
        return ("type", _port(r, "id.orig_p"), "code", _port(r, "id.resp_p"))
    return ("to", port_service(_num(r, "id.resp_p")), "from", port_service(_num(r, "id.orig_p")))


def _compact_v2(r: Record) -> str:
    """compact@2: the fields of compact@1 with ports as services and counts as log2 bins."""
    orig_hist, resp_hist = history_parts(_text(r, "history"))

    def pair(orig: str, resp: str, unit: str) -> str:
        return f"{count_bin(_num(r, orig))}/{count_bin(_num(r, resp))}{unit}"

    return " ".join(
        (
            _text(r, "proto"),
            _text(r, "service"),
            _text(r, "conn_state"),
            f"{orig_hist}/{resp_hist}",
            *_endpoints_v2(r),
            duration_bin(_num(r, "duration")),
            pair("orig_bytes", "resp_bytes", "b"),
            pair("orig_pkts", "resp_pkts", "p"),
            pair("orig_ip_bytes", "resp_ip_bytes", "ip"),
        )
    )


def _side(r: Record, who: str) -> str:
    return (
        f"{count(_num(r, who + '_bytes'))} payload bytes in {count(_num(r, who + '_pkts'))} "
        f"packets ({count(_num(r, who + '_ip_bytes'))} IP bytes)"
    )


def _verbose(r: Record) -> str:
    state = _text(r, "conn_state")
    orig_hist, resp_hist = history_parts(_text(r, "history"))
    missed = _num(r, "missed_bytes")
    return (
        f"Network flow: protocol {_text(r, 'proto')}, service {_text(r, 'service')}, "
        f"state {state} ({CONN_STATES.get(state, 'unknown')}), "
        f"originator history {orig_hist}, responder history {resp_hist}. "
        f"Responder port {_port(r, 'id.resp_p')}, originator port "
        f"{port_class(_num(r, 'id.orig_p'))}. Duration {duration(_num(r, 'duration'))}. "
        f"Originator sent {_side(r, 'orig')}; responder sent {_side(r, 'resp')}; "
        f"missed bytes {count(missed)}."
    )


# Every version of every template, by key (``compact@1``); a bare name means its newest version.
TEMPLATES: Mapping[str, Template] = {
    t.key: t
    for t in (
        Template(
            name="compact",
            version=1,
            max_tokens=48,
            description="edge devices: connection fields only, terse, no key words",
            format_record=_compact,
        ),
        Template(
            name="compact",
            version=2,
            max_tokens=44,
            description="edge devices, shortcut-proof: ports as services, counts as log2 bins",
            format_record=_compact_v2,
        ),
        Template(
            name="verbose",
            version=1,
            max_tokens=128,
            description="cloud side: every connection field in words, conn_state explained",
            format_record=_verbose,
        ),
    )
}


def _newest() -> dict[str, Template]:
    newest: dict[str, Template] = {}
    for template in sorted(TEMPLATES.values(), key=lambda t: t.version):
        newest[template.name] = template
    return newest


# The newest version of each template: what a bare name (``compact``) selects.
NEWEST: Mapping[str, Template] = _newest()


def get_template(name: str) -> Template:
    """The template ``name@version`` (``compact@1``), or the newest version of ``name``."""
    base, _, version = name.partition("@")
    if base not in NEWEST:
        raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}")
    if not version:
        return NEWEST[base]
    template = TEMPLATES.get(name)
    if template is None:
        known = sorted(t.version for t in TEMPLATES.values() if t.name == base)
        raise ValueError(f"prompt template {base!r} has versions {known}, not {version}")
    return template


def choose_template(name_or_auto: str = AUTO, *, max_tokens: int | None = None) -> Template:
    """A named template, or with ``auto`` the richest one within ``max_tokens`` (None: no limit).

    A named template whose budget exceeds ``max_tokens`` is refused rather than truncated,
    because truncation would silently drop the fields at the end of the text.
    """
    if name_or_auto != AUTO:
        template = get_template(name_or_auto)
        if max_tokens is not None and template.max_tokens > max_tokens:
            raise ValueError(
                f"prompt template {template.key} needs up to {template.max_tokens} tokens, "
                f"the device allows {max_tokens}"
            )
        return template
    fitting = [t for t in NEWEST.values() if max_tokens is None or t.max_tokens <= max_tokens]
    if not fitting:
        smallest = min(t.max_tokens for t in NEWEST.values())
        raise ValueError(f"no prompt template fits {max_tokens} tokens (smallest: {smallest})")
    return max(fitting, key=lambda t: (t.max_tokens, t.name))


def render(
    template: Template | str, flows: FlowTable, indices: npt.ArrayLike | None = None
) -> list[str]:
    """The text of every row of ``flows`` (or of the rows at ``indices``), in order."""
    chosen = get_template(template) if isinstance(template, str) else template
    table = flows if indices is None else flows.take(indices)
    columns = {name: table.column(name).tolist() for name in chosen.fields}
    rows = zip(*columns.values(), strict=True)
    return [chosen.format_record(dict(zip(chosen.fields, row, strict=True))) for row in rows]
