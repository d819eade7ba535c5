"""structlog set-up shared by every process.

JSON lines when stderr is not a terminal or when running under systemd (``JOURNAL_STREAM`` or
``INVOCATION_ID`` set); coloured key=value lines on a terminal. Events are stable snake_case
names with fields (see docs/events.md); bind ``client_id``, ``round``, ``model_version``.
An error that ends a command is also one ``fatal_error`` event (``fatal_errors_logged``), even
when it comes before the settings that configure logging could be read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import structlog

from fedllm_core.errors import FedllmError


def _want_json(force: bool | None) -> bool:
    if force is not None:
        return force
    under_systemd = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    return under_systemd or not sys.stderr.isatty()


def configure_logging(
    level: str = "info", *, json: bool | None = None, component: str = ""
) -> None:
    """Configure structlog (and stdlib logging, for libraries) once per process."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component:
        processors.insert(0, _add_component(component))
    if _want_json(json):
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def _add_component(component: str) -> Any:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("component", component)
        return event

    return processor


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)


@contextlib.contextmanager
def fatal_errors_logged(component: str) -> Iterator[None]:
    """Log a ``FedllmError`` ending the block as one ``fatal_error`` event, then re-raise it
    (``run_command`` prints it and exits with its code). Before the settings have configured
    logging (a bad settings file) the defaults do: JSON under systemd or off a terminal."""
    try:
        yield
    except FedllmError as exc:
        if not structlog.is_configured():
            configure_logging(component=component)
        structlog.get_logger(f"fedllm.{component}").error(
            "fatal_error", error=str(exc), exit_code=int(exc.exit_code)
        )
        raise
