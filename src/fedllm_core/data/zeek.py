"""Reading IoT-23 flow records: Zeek ``conn.log.labeled`` files and the canonical CSV form.

Rules of this module:
- Two input forms. (1) Zeek TSV as the Stratosphere Lab publishes it: ``#``-header lines
  (``#separator``, ``#fields``, ``#types``, ...), TAB separated, ``-`` for unset, ``(empty)``
  for an empty set, and in the original IoT-23 layout the last three fields
  ``tunnel_parents label detailed-label`` joined by three spaces instead of TABs.
  (2) The CSV form of the shared IoT-23 copy: a header row with the 23 Zeek names + ``capture``.
  Either may be gzip compressed (``.gz``).
- A malformed line (wrong field count, a number that does not parse, an unknown label) is
  counted and reported with its file and line number in the ``LoadReport``; it is never
  silently dropped and never fatal. An unreadable file is fatal (``DataError``).
- Values are kept as Zeek strings except the numeric fields, which become float64 with NaN
  for ``-`` (unset). Nothing here knows about tasks, splits or prompts.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedllm_core.data.table import (
    CAPTURE,
    NUMERIC_FIELDS,
    STRING_FIELDS,
    ZEEK_FIELDS,
    FlowTable,
)
from fedllm_core.errors import DataError

# Problem details kept per load; the count is always exact, the list is capped so a file of
# garbage cannot eat memory.
MAX_PROBLEMS_KEPT = 200
_LABELS = frozenset({"benign", "malicious"})
# The IoT-23 capture name in a path such as ``CTU-IoT-Malware-Capture-34-1/bro/conn.log.labeled``.
_CAPTURE_IN_PATH = re.compile(r"CTU-(?:IoT-Malware|Honeypot|Malware)-Capture-\d+-\d+")


@dataclass(frozen=True)
class LineProblem:
    """One malformed input line: where it is and why it was not loaded."""

    file: str
    line: int  # 1-based physical line number in the (decompressed) file
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class LoadReport:
    """What a load read: rows kept per file, and every malformed line (count exact)."""

    files: tuple[str, ...] = ()
    rows: int = 0
    rows_per_file: tuple[int, ...] = ()
    malformed: int = 0
    problems: tuple[LineProblem, ...] = ()  # the first MAX_PROBLEMS_KEPT of them

    def merged(self, other: LoadReport) -> LoadReport:
        return LoadReport(
            files=self.files + other.files,
            rows=self.rows + other.rows,
            rows_per_file=self.rows_per_file + other.rows_per_file,
            malformed=self.malformed + other.malformed,
            problems=(self.problems + other.problems)[:MAX_PROBLEMS_KEPT],
        )

    def summary(self) -> str:
        head = f"{self.rows} rows from {len(self.files)} file(s), {self.malformed} malformed"
        return "; ".join([head, *(str(p) for p in self.problems[:5])])


@dataclass
class _Collector:
    """Accumulates parsed rows column-wise for one file."""

    file: str
    strings: dict[str, list[str]] = field(default_factory=lambda: {f: [] for f in STRING_FIELDS})
    numbers: dict[str, list[float]] = field(default_factory=lambda: {f: [] for f in NUMERIC_FIELDS})
    malformed: int = 0
    problems: list[LineProblem] = field(default_factory=list)

    def bad(self, line: int, reason: str) -> None:
        self.malformed += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(LineProblem(self.file, line, reason))

    def add(self, line: int, record: dict[str, str]) -> None:
        parsed: dict[str, float] = {}
        for name in NUMERIC_FIELDS:
            raw = record[name]
            try:
                value = math.nan if raw == "-" else float(raw)
            except ValueError:
                self.bad(line, f"field {name!r}: not a number: {raw[:40]!r}")
                return
            parsed[name] = value
        if record["label"].lower() not in _LABELS:
            self.bad(line, f"field 'label': expected Benign/Malicious, got {record['label']!r}")
            return
        for name in STRING_FIELDS:
            self.strings[name].append(record[name])
        for name, value in parsed.items():
            self.numbers[name].append(value)

    def report(self) -> LoadReport:
        rows = len(self.strings[CAPTURE])
        return LoadReport((self.file,), rows, (rows,), self.malformed, tuple(self.problems))

    def table(self) -> FlowTable:
        return FlowTable.from_lists(self.strings, self.numbers)


def capture_from_path(path: Path) -> str:
    """The IoT-23 capture a raw log belongs to, read from its path (else the file's name)."""
    found = _CAPTURE_IN_PATH.findall(str(path))
    return found[-1] if found else path.name


def _open_text(path: Path) -> io.TextIOBase:
    try:
        if path.name.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
        return open(path, encoding="utf-8", errors="replace", newline="")
    except OSError as exc:
        raise DataError(f"cannot read flow file {path}: {exc}") from exc


def _is_csv(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(".csv")


def _zeek_split(line: str, separator: str) -> list[str]:
    # The original IoT-23 logs join tunnel_parents/label/detailed-label with three spaces;
    # no Zeek value of conn.log contains a run of three spaces, so this is unambiguous.
    return line.replace("   ", separator).split(separator)


def _unescape_separator(value: str) -> str:
    # Zeek writes the separator as an escape sequence, e.g. "#separator \x09".
    return value.encode("ascii").decode("unicode_escape") if value.startswith("\\x") else value


class ZeekStream:
    """Incremental parser of one Zeek conn.log, labelled or not (also for live, growing logs).

    ``feed(line)`` follows the ``#separator``/``#fields`` headers and returns a data line as a
    dict of Zeek strings keyed by field name (``None`` for header and blank lines). A data line
    whose field count does not match the header raises ``ValueError`` with the reason. Without
    a ``#fields`` header the IoT-23 order is assumed, with or without the label fields.
    Prompt templates accept these string records as they are.
    """

    def __init__(self) -> None:
        self.separator = "\t"
        self.fields: list[str] | None = None

    def feed(self, raw: str) -> dict[str, str] | None:
        line = raw.rstrip("\r\n")
        if not line:
            return None
        if line.startswith("#"):
            self._header(line)
            return None
        values = _zeek_split(line, self.separator)
        fields = self.fields or _default_fields(len(values))
        if len(values) != len(fields):
            raise ValueError(f"expected {len(fields)} fields, got {len(values)}")
        return dict(zip(fields, values, strict=True))

    def _header(self, line: str) -> None:
        key, _, value = line.partition(" " if line.startswith("#separator") else self.separator)
        if key == "#separator":
            self.separator = _unescape_separator(value.strip())
        elif key == "#fields":
            self.fields = _zeek_split(value, self.separator)


def _default_fields(count: int) -> list[str]:
    # A headerless unlabelled conn.log has the first 21 IoT-23 fields (up to tunnel_parents).
    unlabelled = ZEEK_FIELDS[: ZEEK_FIELDS.index("tunnel_parents") + 1]
    return list(unlabelled if count == len(unlabelled) else ZEEK_FIELDS)


def _read_zeek(lines: Iterable[str], col: _Collector, capture: str) -> None:
    stream = ZeekStream()
    for number, raw in enumerate(lines, start=1):
        try:
            record = stream.feed(raw)
        except ValueError as exc:
            col.bad(number, str(exc))
            continue
        if record is None:
            continue
        missing = [f for f in ZEEK_FIELDS if f not in record]
        if missing:
            col.bad(number, f"lacks fields {missing}")
            continue
        record.setdefault(CAPTURE, capture)
        col.add(number, record)


def _read_csv(lines: Iterable[str], col: _Collector, capture: str) -> None:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    missing = [f for f in ZEEK_FIELDS if f not in header]
    if missing:
        col.bad(1, f"CSV header lacks fields {missing}; file skipped")
        return
    width = len(header)
    for values in reader:
        if len(values) != width:
            col.bad(reader.line_num, f"expected {width} fields, got {len(values)}")
            continue
        record = dict(zip(header, values, strict=True))
        record.setdefault(CAPTURE, capture)
        col.add(reader.line_num, record)


def read_flow_file(path: Path, *, capture: str | None = None) -> tuple[FlowTable, LoadReport]:
    """Read one Zeek ``conn.log.labeled`` or IoT-23 CSV file (optionally ``.gz``).

    ``capture`` names the IoT-23 scenario for files without a ``capture`` column (raw Zeek logs);
    by default it is taken from the path (``CTU-...-Capture-N-M``) or the file name.
    """
    col = _Collector(str(path))
    name = capture or capture_from_path(path)
    with _open_text(path) as fh:
        (_read_csv if _is_csv(path) else _read_zeek)(fh, col, name)
    return col.table(), col.report()


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files named directly, plus ``*.csv.gz``/``*.csv``/``*.labeled`` inside named folders."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _looks_like_flows(p.name))
            if not found:
                raise DataError(f"no flow files (*.csv[.gz], *.labeled[.gz]) under {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DataError(f"flow file not found: {path}")
    return out


def _looks_like_flows(name: str) -> bool:
    bare = name.removesuffix(".gz")
    return bare.endswith((".csv", ".labeled"))


def read_flow_files(paths: Sequence[Path]) -> tuple[FlowTable, LoadReport]:
    """Read and concatenate several flow files (in the given order)."""
    tables: list[FlowTable] = []
    report = LoadReport()
    for path in paths:
        table, part = read_flow_file(path)
        tables.append(table)
        report = report.merged(part)
    return FlowTable.concat(tables), report
