"""The connection state machine as one table (in the style of h11's ``_state.py``).

Rules: the table maps (role, state, direction, frame type) to the next state; anything not
in it is illegal: a table miss on receive is the peer's UNEXPECTED_MESSAGE, on send our own
LocalProtocolError. Error and Bye end the conversation from any live state, in either
direction. docs/protocol.md ("State machine") is generated from the same facts; a test
checks the two agree.
"""

from __future__ import annotations

from enum import Enum

from fedllm_proto.frames import FrameType as T


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class State(Enum):
    IDLE = "idle"  # nothing exchanged yet
    HELLO_SENT = "hello_sent"  # client: Hello out, waiting for Welcome
    HELLO_RECEIVED = "hello_received"  # server: Hello in, Welcome (or Reject + Bye) to send
    OPEN = "open"  # version negotiated; application messages flow
    CLOSED = "closed"  # Bye or Error sent or received
    ERROR = "error"  # a protocol error was raised locally; nothing more is processed


class Direction(Enum):
    SEND = "send"
    RECV = "recv"


S, R = Direction.SEND, Direction.RECV
Key = tuple[Role, State, Direction, T]

# (role, state, direction) -> {frame type: next state}, before the any-state rules below.
_CORE: dict[tuple[Role, State, Direction], dict[T, State]] = {
    (Role.CLIENT, State.IDLE, S): {T.HELLO: State.HELLO_SENT},
    (Role.CLIENT, State.HELLO_SENT, R): {T.WELCOME: State.OPEN, T.REJECT: State.HELLO_SENT},
    (Role.CLIENT, State.OPEN, S): {T.UPDATE: State.OPEN},
    (Role.CLIENT, State.OPEN, R): {
        T.GLOBAL_MODEL: State.OPEN,
        T.TRAIN_REQUEST: State.OPEN,
        T.ACK: State.OPEN,
        T.REJECT: State.OPEN,
        T.TUNING: State.OPEN,
    },
    (Role.SERVER, State.IDLE, R): {T.HELLO: State.HELLO_RECEIVED},
    (Role.SERVER, State.HELLO_RECEIVED, S): {
        T.WELCOME: State.OPEN,
        T.REJECT: State.HELLO_RECEIVED,
    },
    (Role.SERVER, State.OPEN, S): {
        T.GLOBAL_MODEL: State.OPEN,
        T.TRAIN_REQUEST: State.OPEN,
        T.ACK: State.OPEN,
        T.REJECT: State.OPEN,
        T.TUNING: State.OPEN,
    },
    (Role.SERVER, State.OPEN, R): {T.UPDATE: State.OPEN},
}
_LIVE = (State.IDLE, State.HELLO_SENT, State.HELLO_RECEIVED, State.OPEN)
_HEARTBEAT_STATES = (State.HELLO_SENT, State.HELLO_RECEIVED, State.OPEN)


def _build() -> dict[Key, State]:
    table: dict[Key, State] = {}
    for (role, state, direction), moves in _CORE.items():
        for ftype, nxt in moves.items():
            table[(role, state, direction, ftype)] = nxt
    for role in Role:
        for direction in Direction:
            for state in _LIVE:
                table[(role, state, direction, T.ERROR)] = State.CLOSED
                table[(role, state, direction, T.BYE)] = State.CLOSED
            for state in _HEARTBEAT_STATES:
                table[(role, state, direction, T.HEARTBEAT)] = state
    return table


TRANSITIONS: dict[Key, State] = _build()
MESSAGE_FRAME_TYPES = tuple(t for t in T if t is not T.CHUNK)


def next_state(role: Role, state: State, direction: Direction, ftype: T) -> State | None:
    """The state after this message, or None when the message is illegal here."""
    return TRANSITIONS.get((role, state, direction, ftype))
