"""``FlowTable``: IoT-23 flow records held column-wise in numpy arrays.

Rules: string fields are object arrays of the original Zeek strings (``-`` = unset is kept);
numeric fields are float64 with NaN for unset. A table is never mutated: ``take`` and
``concat`` return new tables. Row order is the load order (files in order, lines in order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# The 23 fields of an IoT-23 conn.log.labeled, in Zeek's order.
ZEEK_FIELDS: tuple[str, ...] = (
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
    "label",
    "detailed-label",
)
CAPTURE = "capture"  # the IoT-23 scenario a row belongs to (CSV column, or from the log's path)
NUMERIC_FIELDS: tuple[str, ...] = (
    "ts",
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
STRING_FIELDS: tuple[str, ...] = (
    *(f for f in ZEEK_FIELDS if f not in NUMERIC_FIELDS),
    CAPTURE,
)

FloatArray = npt.NDArray[np.float64]
ObjectArray = npt.NDArray[np.object_]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class FlowTable:
    """Flow records, one numpy array per field, all of the same length (made read-only)."""

    strings: Mapping[str, ObjectArray]
    numbers: Mapping[str, FloatArray]

    def __post_init__(self) -> None:
        lengths = {len(a) for a in (*self.strings.values(), *self.numbers.values())}
        if len(lengths) > 1:
            raise ValueError(f"FlowTable columns differ in length: {sorted(lengths)}")
        # Loaded tables are cached and shared: make accidental in-place edits an error.
        for array in (*self.strings.values(), *self.numbers.values()):
            array.flags.writeable = False

    @classmethod
    def from_lists(
        cls,
        strings: Mapping[str, Sequence[str]],
        numbers: Mapping[str, Sequence[float]],
    ) -> FlowTable:
        return cls(
            strings={k: _object_array(v) for k, v in strings.items()},
            numbers={k: np.asarray(v, dtype=np.float64) for k, v in numbers.items()},
        )

    @classmethod
    def empty(cls) -> FlowTable:
        return cls.from_lists({f: [] for f in STRING_FIELDS}, {f: [] for f in NUMERIC_FIELDS})

    @classmethod
    def concat(cls, tables: Sequence[FlowTable]) -> FlowTable:
        if not tables:
            return cls.empty()
        first = tables[0]
        return cls(
            strings={k: np.concatenate([t.strings[k] for t in tables]) for k in first.strings},
            numbers={k: np.concatenate([t.numbers[k] for t in tables]) for k in first.numbers},
        )

    def __len__(self) -> int:
        return len(self.strings[CAPTURE])

    def column(self, name: str) -> ObjectArray | FloatArray:
        """One field's array (object array of strings, or float64 with NaN for unset)."""
        if name in self.strings:
            return self.strings[name]
        return self.numbers[name]

    def take(self, indices: npt.ArrayLike) -> FlowTable:
        """The rows at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return FlowTable(
            strings={k: v[idx] for k, v in self.strings.items()},
            numbers={k: v[idx] for k, v in self.numbers.items()},
        )

    def record(self, i: int) -> dict[str, str | float]:
        """Row ``i`` as a dict keyed by Zeek field name (numbers as float, NaN = unset)."""
        row: dict[str, str | float] = {k: str(v[i]) for k, v in self.strings.items()}
        row.update({k: float(v[i]) for k, v in self.numbers.items()})
        return row

    @property
    def captures(self) -> ObjectArray:
        return self.strings[CAPTURE]


def _object_array(values: Sequence[str]) -> ObjectArray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
