"""The one timeout record: what it refuses, and that the server's come from its settings."""

from __future__ import annotations

import pytest

from fedllm_proto.timeouts import CLIENT, SERVER, Timeouts
from fedllm_server.settings import ServerSettings


@pytest.mark.parametrize("field", ["tls_handshake_s", "hello_s", "bye_s", "linger_s"])
@pytest.mark.parametrize("bad", [0, -1.0])
def test_a_deadline_that_is_not_positive_is_refused_by_name(field: str, bad: float) -> None:
    with pytest.raises(ValueError, match=field):
        Timeouts(**{field: bad})


def test_idle_must_outlast_the_heartbeat_or_every_quiet_link_would_die() -> None:
    with pytest.raises(ValueError, match="idle_s"):
        Timeouts(heartbeat_s=5.0, idle_s=5.0)
    assert Timeouts(heartbeat_s=None, idle_s=1.0).idle_s == 1.0


def test_but_changes_only_what_it_names() -> None:
    quick = SERVER.but(idle_s=0.5, heartbeat_s=0.1)
    assert (quick.idle_s, quick.heartbeat_s) == (0.5, 0.1)
    assert quick.tls_handshake_s == SERVER.tls_handshake_s
    assert SERVER.idle_s == 30.0  # the default record is untouched
    assert CLIENT.heartbeat_s is None  # a client adopts the interval from Welcome


def test_the_server_builds_its_timeouts_from_its_settings() -> None:
    settings = ServerSettings(
        insecure=True,
        tls_handshake_timeout_s=3.0,
        handshake_timeout_s=4.0,
        heartbeat_interval_s=2.0,
        idle_timeout_s=9.0,
    )
    t = settings.timeouts
    assert (t.tls_handshake_s, t.hello_s, t.heartbeat_s, t.idle_s) == (3.0, 4.0, 2.0, 9.0)
