"""Host context: what the originating host did in the last N seconds, beside each flow.

Why: one flow of a scan or a flood often looks like one benign failed connection (a SYN to
port 23 and nothing back), and a detector that reads flows one by one must guess. The same
host sending hundreds of such SYNs to as many addresses within a minute is the behaviour, and
it looks the same in every capture. So a flow may carry four figures about its originating
host (``id.orig_h``) over the window ending at this flow, the flow itself included:

- ``host.flows``: flows it originated;
- ``host.destinations``: distinct responder addresses;
- ``host.ports``: distinct responder ports;
- ``host.syn_only``: flows whose whole history is one originator SYN (Zeek ``S``).

Rules: one streaming `HostWindow` computes them, in training (`context_columns`, over a loaded
table) and in live `classify --follow` (one `annotate` per record as it is read), so both see
the same numbers for the same stream. Flows are taken in the order Zeek writes them, by end
time (``ts + duration``); the window holds the host's flows whose end time is at most
``window_s`` before the newest end time seen (a clock that never goes back, so an out-of-order
line evicts nothing early). Memory is bounded by the flows inside the window. A flow without
``ts`` (Zeek's ``-``) is at no known time: it gets the context of itself alone and enters no
window, in both paths, so a bad line loses nothing and disturbs no other flow.
A caveat of the shipped data: the ``pooled_*`` files hold label-stratified *samples* of their
captures (iot23/SOURCE.md), so their counts are lower than the live traffic had; the ratios
(distinct destinations or SYN-only flows per flow) survive sampling better than the counts.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from fedllm_core.data.table import FlowTable
from fedllm_core.flowbins import count_bin
from fedllm_core.prompts import Template

CONTEXT_FIELDS: tuple[str, ...] = (
    "host.flows",
    "host.destinations",
    "host.ports",
    "host.syn_only",
)
CONTEXT_TOKENS = 12  # most BERT word-piece tokens `describe` adds (a test checks the shipped data)
# What a flow record needs for its host's window (Zeek field names).
WINDOW_FIELDS: tuple[str, ...] = (
    "ts",
    "duration",
    "id.orig_h",
    "id.resp_h",
    "id.resp_p",
    "history",
)
Record = Mapping[str, object]
K = TypeVar("K", str, float)


@dataclass
class _Host:
    """One originating host's flows inside the window, as counters (O(1) per flow)."""

    flows: int = 0
    syn_only: int = 0
    destinations: Counter[str] = field(default_factory=Counter)
    ports: Counter[float] = field(default_factory=Counter)

    def add_flow(self, seen: _Seen) -> _Host:
        self._count(seen, +1)
        return self

    def remove_flow(self, seen: _Seen) -> None:
        self._count(seen, -1)

    def _count(self, seen: _Seen, sign: int) -> None:
        self.flows += sign
        self.syn_only += sign * seen.syn_only
        _bump(self.destinations, seen.destination, sign)
        _bump(self.ports, seen.port, sign)


def _bump(counter: Counter[K], key: K, sign: int) -> None:
    counter[key] += sign
    if counter[key] == 0:
        del counter[key]  # len(counter) is the number of distinct keys inside the window


@dataclass(frozen=True)
class _Seen:
    end: float  # NaN: the flow has no ts
    host: str
    destination: str
    port: float
    syn_only: bool


def _context(host: _Host) -> dict[str, float]:
    return {
        "host.flows": float(host.flows),
        "host.destinations": float(len(host.destinations)),
        "host.ports": float(len(host.ports)),
        "host.syn_only": float(host.syn_only),
    }


class HostWindow:
    """The streaming window over every originating host (see the module rules)."""

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"host context window must be > 0 s, got {window_s}")
        self.window_s = window_s
        self._hosts: dict[str, _Host] = {}
        self._inside: deque[_Seen] = deque()  # every host's flows, oldest first
        self._now = -math.inf  # the newest end time seen

    def observe(self, record: Record) -> dict[str, float]:
        """Add one flow and return its host's context (this flow included)."""
        seen = _seen(record)
        if math.isnan(seen.end):  # no ts: a flow at no known time, seen alone, kept out
            return _context(_Host().add_flow(seen))
        self._now = max(self._now, seen.end)
        self._evict(self._now - self.window_s)
        host = self._hosts.setdefault(seen.host, _Host()).add_flow(seen)
        self._inside.append(seen)
        return _context(host)

    def annotate(self, record: Record) -> dict[str, object]:
        """``record`` with its context fields added (live classification)."""
        return {**record, **self.observe(record)}

    def __len__(self) -> int:
        """Flows inside the window now (all hosts)."""
        return len(self._inside)

    def _evict(self, before: float) -> None:
        while self._inside and self._inside[0].end < before:
            old = self._inside.popleft()
            host = self._hosts[old.host]
            host.remove_flow(old)
            if host.flows == 0:
                del self._hosts[old.host]


def _number(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:  # Zeek's "-": unset
        return math.nan


def _seen(record: Record) -> _Seen:
    start = _number(record.get("ts"))
    duration = _number(record.get("duration"))
    return _Seen(
        end=start + (0.0 if math.isnan(duration) else duration),
        host=str(record.get("id.orig_h", "-")),
        destination=str(record.get("id.resp_h", "-")),
        port=_number(record.get("id.resp_p")),
        syn_only=str(record.get("history", "-")) == "S",
    )


def context_columns(flows: FlowTable, window_s: float) -> dict[str, np.ndarray]:
    """Each row's host context, one window per capture (a capture is one network's stream),
    the rows of a capture taken by end time as Zeek writes them. float64 columns in row order.
    """
    columns = {name: np.zeros(len(flows)) for name in CONTEXT_FIELDS}
    values = {name: flows.column(name).tolist() for name in WINDOW_FIELDS}
    end = flows.numbers["ts"] + np.nan_to_num(flows.numbers["duration"], nan=0.0)
    order = np.lexsort((np.arange(len(flows)), end, flows.captures))  # stable within a capture
    window, capture = HostWindow(window_s), None
    for row in order.tolist():
        if flows.captures[row] != capture:
            window, capture = HostWindow(window_s), flows.captures[row]
        context = window.observe({name: values[name][row] for name in WINDOW_FIELDS})
        for name, value in context.items():
            columns[name][row] = value
    return columns


def with_context(flows: FlowTable, window_s: float) -> FlowTable:
    """``flows`` with the four context columns added (numbers)."""
    return FlowTable(
        strings=flows.strings, numbers={**flows.numbers, **context_columns(flows, window_s)}
    )


def describe(record: Record) -> str:
    """The context as prompt words: ``host 256 flows 128 dst 1 ports syn all``. Counts use the
    same log2 bins as the flow fields (flowbins); the SYN-only share is none/some/most/all."""
    flows = _number(record.get("host.flows"))
    if math.isnan(flows) or flows < 1:
        raise ValueError("the record carries no host context (host.flows)")
    share = _number(record.get("host.syn_only")) / flows
    return (
        f"host {count_bin(flows)} flows {count_bin(_number(record.get('host.destinations')))} dst "
        f"{count_bin(_number(record.get('host.ports')))} ports syn {_share_word(share)}"
    )


def _share_word(share: float) -> str:
    if share <= 0:
        return "none"
    if share < 0.5:
        return "some"
    return "most" if share < 1 else "all"


def with_host_context(template: Template, window_s: float) -> Template:
    """``template`` followed by `describe`: a template of its own, ``compact+host60s@2``, so
    the model fingerprint tells a model that reads host context from one that does not."""
    base = template.format_record

    def format_record(record: Record) -> str:
        return f"{base(record)} {describe(record)}"

    return Template(
        name=f"{template.name}+host{window_s:g}s",
        version=template.version,
        max_tokens=template.max_tokens + CONTEXT_TOKENS,
        description=f"{template.description}; host context over {window_s:g} s",
        format_record=format_record,
        fields=(*template.fields, *CONTEXT_FIELDS),
    )
