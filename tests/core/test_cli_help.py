"""`fedllm --help`, `--version` and every subcommand's --help, as a user reads them."""

from __future__ import annotations

import pytest

from fedllm_core.cli import SUBCOMMANDS, main
from fedllm_core.version import package_version


def _output(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 0
    return capsys.readouterr().out


def test_main_command_has_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _output(["--version"], capsys).strip() == f"fedllm {package_version()}"


@pytest.mark.parametrize("argv", [["server", "--version"], ["client", "--version"]])
def test_daemons_have_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert package_version() in _output(argv, capsys)


@pytest.mark.parametrize("argv", [[], *[[name] for name in SUBCOMMANDS]])
def test_help_has_a_description_without_markup(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _output([*argv, "--help"], capsys)
    usage, _, rest = text.partition("\n\n")
    description = rest.split("\n\n", 1)[0]
    assert usage.startswith("usage:")
    # a description paragraph comes before the argument lists
    assert not description.startswith(("options:", "positional arguments:")), text
    assert "``" not in text and ":func:" not in text and ":class:" not in text


def test_classify_help_is_classify_own(capsys: pytest.CaptureFixture[str]) -> None:
    text = _output(["client", "classify", "--help"], capsys)
    assert "--alerts-only" in text and "--input" in text


EXPERIMENT_ONLY = ("--strategies", "--attack", "--malicious", "--defense", "--seeds", "--partition")
BUDGET = ("--clients", "--rounds", "--local-steps", "--model")


def _flags(text: str) -> set[str]:
    return {word.strip(",[]") for word in text.split() if word.startswith("--")}


def test_baseline_and_bench_list_only_flags_they_use(capsys: pytest.CaptureFixture[str]) -> None:
    experiment = _flags(_output(["experiment", "--help"], capsys))
    baseline = _flags(_output(["baseline", "--help"], capsys))
    bench = _flags(_output(["bench", "models", "--help"], capsys))
    assert set(EXPERIMENT_ONLY) | set(BUDGET) <= experiment
    assert not baseline & set(EXPERIMENT_ONLY)  # no federation in a baseline
    assert set(BUDGET) <= baseline  # it trains clients x rounds x local-steps steps
    assert not bench & (set(EXPERIMENT_ONLY) | set(BUDGET))  # --steps and --models instead
    assert {"--steps", "--models", "--split", "--quick"} <= bench
