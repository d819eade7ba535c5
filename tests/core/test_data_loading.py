"""Reading Zeek conn.log.labeled (IoT-23 original layout) and the IoT-23 CSV form."""

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from fedllm_core.data import FlowTable, LoadReport, ZeekStream, load_flows, read_flow_file
from fedllm_core.data.zeek import capture_from_path
from fedllm_core.errors import DataError
from fedllm_core.prompts import get_template, render

FIXTURES = Path(__file__).parent / "fixtures"
SNIPPET = FIXTURES / "CTU-IoT-Malware-Capture-34-1" / "bro" / "conn.log.labeled"
HEADER_LINES = 8  # '#separator' ... '#types' before the first record


def _read(path: Path) -> tuple[FlowTable, LoadReport]:
    return read_flow_file(path)


def test_real_snippet_loads_every_record() -> None:
    table, report = _read(SNIPPET)
    assert (len(table), report.rows, report.malformed) == (12, 12, 0)


def test_three_space_joined_label_fields_are_split() -> None:
    table, _ = _read(SNIPPET)
    pairs = set(zip(table.strings["label"], table.strings["detailed-label"], strict=True))
    assert pairs == {
        ("Benign", "-"),
        ("Malicious", "C&C"),
        ("Malicious", "PartOfAHorizontalPortScan"),
        ("Malicious", "DDoS"),
    }


def test_capture_comes_from_the_path() -> None:
    table, _ = _read(SNIPPET)
    assert set(table.captures) == {"CTU-IoT-Malware-Capture-34-1"}


def test_unset_numbers_become_nan_and_others_parse() -> None:
    table, _ = _read(SNIPPET)
    # row 2: "-" duration and bytes, 1 packet of 60 IP bytes
    got = [float(table.numbers[f][2]) for f in ("duration", "orig_pkts", "orig_ip_bytes")]
    assert (math.isnan(got[0]), got[1:]) == (True, [1.0, 60.0])


def test_exact_values_survive() -> None:
    table, _ = _read(SNIPPET)
    row = table.record(4)
    assert (row["uid"], row["service"], row["history"], row["duration"]) == (
        "CgWRxLnD9A4DVGPhj",
        "irc",
        "ShAdDatfr",
        48976.819063,
    )


def test_tab_separated_layout_reads_the_same(tmp_path: Path) -> None:
    tabbed = tmp_path / "conn.log.labeled"
    tabbed.write_text(SNIPPET.read_text().replace("   ", "\t"))
    a, _ = _read(SNIPPET)
    b, _ = _read(tabbed)
    assert list(a.strings["detailed-label"]) == list(b.strings["detailed-label"])


def test_gzip_log_reads_the_same(tmp_path: Path) -> None:
    packed = tmp_path / "conn.log.labeled.gz"
    packed.write_bytes(gzip.compress(SNIPPET.read_bytes()))
    table, _ = _read(packed)
    assert np.array_equal(
        table.numbers["orig_ip_bytes"], _read(SNIPPET)[0].numbers["orig_ip_bytes"]
    )


def _with_bad_lines(tmp_path: Path) -> Path:
    lines = SNIPPET.read_text().splitlines()
    good = lines[HEADER_LINES]
    fields = good.split("\t")
    bad_number = "\t".join([*fields[:9], "12x", *fields[10:]])
    bad_label = good.replace("Benign", "Maybe")
    # physical lines 10, 12, 14 (1-based) become malformed
    lines.insert(9, "\t".join(fields[:5]))
    lines.insert(11, bad_number)
    lines.insert(13, bad_label)
    path = tmp_path / "CTU-IoT-Malware-Capture-34-1.conn.log.labeled"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    table, report = _read(_with_bad_lines(tmp_path))
    assert (len(table), report.malformed) == (12, 3)


def test_malformed_lines_report_file_and_line(tmp_path: Path) -> None:
    path = _with_bad_lines(tmp_path)
    _, report = _read(path)
    assert [(p.file, p.line) for p in report.problems] == [(str(path), n) for n in (10, 12, 14)]


def test_malformed_reasons_name_the_problem(tmp_path: Path) -> None:
    _, report = _read(_with_bad_lines(tmp_path))
    reasons = [p.reason for p in report.problems]
    assert ("fields, got 5" in reasons[0], "orig_bytes" in reasons[1], "label" in reasons[2]) == (
        True,
        True,
        True,
    )


def test_csv_form_reports_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    header = "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,service,duration,orig_bytes,"
    header += "resp_bytes,conn_state,local_orig,local_resp,missed_bytes,history,orig_pkts,"
    header += "orig_ip_bytes,resp_pkts,resp_ip_bytes,tunnel_parents,label,detailed-label,capture"
    good = (
        "1540469302.538640,CGm6jB4dXK71ZDWUDh,192.168.1.132,58687,216.239.35.4,123,udp,-,"
        "0.114184,48,48,SF,-,-,0,Dd,1,76,1,76,-,benign,-,CTU-Honeypot-Capture-4-1"
    )
    path = tmp_path / "flows.csv"
    path.write_text("\n".join([header, good, good.replace(",76,1", ",seventy,1", 1), good[:40]]))
    table, report = _read(path)
    assert (len(table), [p.line for p in report.problems]) == (1, [3, 4])


def test_csv_without_zeek_columns_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    table, report = _read(path)
    assert (len(table), report.malformed) == (0, 1)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        load_flows([tmp_path / "nope.csv"])


def test_folder_loads_every_flow_file(tmp_path: Path) -> None:
    for name in ("a.conn.log.labeled", "b.conn.log.labeled"):
        (tmp_path / name).write_text(SNIPPET.read_text())
    table, report = load_flows([tmp_path])
    assert (len(table), len(report.files)) == (24, 2)


def test_capture_name_falls_back_to_file_name() -> None:
    assert capture_from_path(Path("/x/y/conn.log.labeled")) == "conn.log.labeled"


def _unlabelled_lines() -> list[str]:
    # The snippet as plain Zeek writes it on an edge host: no label fields.
    out = []
    for line in SNIPPET.read_text().splitlines():
        if line.startswith(("#fields", "#types")) or not line.startswith("#"):
            line = line.split("   ")[0]
        out.append(line)
    return out


def test_stream_reads_an_unlabelled_live_log() -> None:
    stream = ZeekStream()
    records = [r for r in map(stream.feed, _unlabelled_lines()) if r is not None]
    assert (len(records), records[4]["service"], "label" in records[4]) == (12, "irc", False)


def test_stream_record_renders_like_the_loaded_row() -> None:
    stream = ZeekStream()
    records = [r for r in map(stream.feed, _unlabelled_lines()) if r is not None]
    table, _ = _read(SNIPPET)
    compact = get_template("compact")
    assert [compact(r) for r in records] == render(compact, table)


def test_stream_without_header_takes_unlabelled_iot23_order() -> None:
    record = ZeekStream().feed(_unlabelled_lines()[HEADER_LINES])
    assert record is not None and record["history"] == "DdAtaFf"


def test_stream_refuses_a_short_line() -> None:
    with pytest.raises(ValueError, match="fields"):
        ZeekStream().feed("1.0\tCabc\t10.0.0.1")
