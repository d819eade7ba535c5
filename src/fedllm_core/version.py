"""fedllm's own version, as installed (what every ``--version`` prints)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def package_version() -> str:
    try:
        return version("fedllm")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "0+unknown"


def version_text(prog: str) -> str:
    """The line ``--version`` prints, e.g. ``fedllm-client 0.1.0``."""
    return f"{prog} {package_version()}"
