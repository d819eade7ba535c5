"""docs/protocol.md is normative: its tables must say what the code does."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from fedllm_proto import frames, limits, messages
from fedllm_proto.errors import ErrorCode
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.states import _CORE

SPEC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^##+ {re.escape(title)}\n(.*?)(?=^##|\Z)", SPEC, re.M | re.S)
    assert match, f"no section {title!r} in docs/protocol.md"
    return match.group(1)


def rows(text: str) -> list[list[str]]:
    """Cells of every table body row in ``text`` (header and separator rows skipped)."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("|")]
    out = []
    for i, line in enumerate(lines):
        is_header = i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if not is_header and not line.startswith("|---"):
            out.append([c.strip().strip("`") for c in line.strip("|").split("|")])
    return out


def test_frame_type_numbers_match_the_spec() -> None:
    spec = {name: int(num) for num, name, *_ in rows(section("3. Frame types"))}
    assert spec == {t.name: int(t) for t in FrameType}


def test_error_codes_match_the_spec() -> None:
    spec = {name: int(code) for code, name, *_ in rows(section("8. Error codes"))}
    assert spec == {c.name: int(c) for c in ErrorCode}


def test_flags_match_the_spec() -> None:
    spec = {name: int(bit, 16) for bit, name, *_ in rows(section("2. Framing")) if "x" in bit}
    assert spec == {f.name: int(f) for f in Flags if f is not Flags.NONE}


def test_header_layout_matches_the_spec() -> None:
    layout = [r for r in rows(section("2. Framing")) if r[0].isdigit()]
    assert sum(int(size) for _, size, *_ in layout) == frames.HEADER_SIZE
    assert frames.MAGIC.decode() in SPEC


@pytest.mark.parametrize("cls", list(messages.MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
def test_message_fields_match_the_spec(cls: type) -> None:
    title = f"{cls.TYPE.name} ({int(cls.TYPE)})"
    doc_fields = {r[0] for r in rows(section(title))}
    code_fields = {f.name for f in dataclasses.fields(cls)}
    if "tensors" in code_fields:  # tensors travel as manifest + body; encoding is a field
        code_fields = (code_fields - {"tensors"}) | {"manifest"}
    assert doc_fields == code_fields


def test_state_table_matches_the_spec() -> None:
    spec = {tuple(r) for r in rows(section("7. State machine"))}
    code = {
        (role.value, state.value, d.value, ftype.name, nxt.value)
        for (role, state, d), moves in _CORE.items()
        for ftype, nxt in moves.items()
    }
    assert spec == code


def test_default_limits_match_the_spec() -> None:
    units = {"KiB": limits.KiB, "MiB": limits.MiB, "GiB": limits.GiB}
    defaults = limits.Limits()
    for name, default, *_ in rows(section("9. Limits")):
        number, _, unit = default.partition(" ")
        assert getattr(defaults, name) == int(number) * units.get(unit, 1), name
