"""The typed messages of the wire: frozen dataclasses that validate themselves.

Rules: an invalid message cannot be constructed (``InvalidMessage``, a ValueError, names the
field); enums are coerced from their wire values so a decoded message equals the one sent;
mappings are stored read-only; tensor messages compare by metadata only (arrays have no
truth value), compare their ``tensors`` explicitly. Field lists are normative in
docs/protocol.md; wire packing lives in wire.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from fedllm_proto.codec import ALLOWED_DTYPES, Encoding, TensorDict
from fedllm_proto.errors import ErrorCode, LocalProtocolError
from fedllm_proto.frames import FrameType

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)  # what this build speaks, oldest first
MAX_TEXT = 4096  # detail / reason strings
MAX_ID = 256  # ids, names, fingerprints, strategy names
Scalar = bool | int | float | str


class TriggerReason(StrEnum):
    ROUND = "round"  # sync strategies: the upload answers a TrainRequest
    PERFORMANCE = "performance"
    GRADIENT_NORM = "gradient_norm"
    MAX_SILENCE = "max_silence"


class RejectCode(StrEnum):
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    TENSOR_MISMATCH = "tensor_mismatch"  # names / shapes / dtypes differ from the global model
    NON_FINITE = "non_finite"
    NORM_TOO_LARGE = "norm_too_large"
    FUTURE_VERSION = "future_version"
    TOO_STALE = "too_stale"
    REPLAY = "replay"
    RATE_LIMITED = "rate_limited"
    UNEXPECTED = "unexpected"  # e.g. an update for a round that is not running


class ByeCode(StrEnum):
    """Why a side said Bye: what the other side should do next (docs/protocol.md, BYE)."""

    UNSPECIFIED = "unspecified"  # no code given (older peers); also any code we do not know
    SHUTDOWN = "shutdown"  # the sender stops (a client told to stop)
    RESTARTING = "restarting"  # the server goes away and comes back: reconnect with backoff
    FINISHED = "finished"  # the federation is complete: nothing more to do, do not reconnect
    REVOKED = "revoked"  # the receiver's certificate is revoked: reconnecting cannot help
    REFUSED = "refused"  # the receiver may not join (e.g. fingerprint): reconnecting cannot help


_BYE_CODES = frozenset(ByeCode)


class InvalidMessage(LocalProtocolError, ValueError):
    """A message field is invalid; raised by the constructors."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.BAD_MESSAGE, detail)


def _int(name: str, value: Any, low: int, high: int = 2**63 - 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidMessage(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _float(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMessage(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise InvalidMessage(f"{name} must be > 0, got {value!r}")
    return float(value)


def _str(name: str, value: Any, max_len: int = MAX_ID, empty: bool = True) -> None:
    if not isinstance(value, str) or len(value) > max_len or (not empty and not value):
        raise InvalidMessage(f"{name} must be a {'' if empty else 'non-empty '}str <= {max_len}")


def _enum(cls: type[Any], name: str, value: Any) -> Any:
    try:
        return cls(value)
    except (ValueError, TypeError):
        raise InvalidMessage(f"{name}: {value!r} is not a {cls.__name__}") from None


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclass: normalise once, in __post_init__


def _mapping(name: str, value: Any, check: Any) -> MappingProxyType[str, Any]:
    if not isinstance(value, Mapping) or len(value) > 1024:
        raise InvalidMessage(f"{name} must be a mapping of <= 1024 entries")
    for key, item in value.items():
        _str(f"{name} key", key, empty=False)
        check(f"{name}[{key!r}]", item)
    return MappingProxyType(dict(value))


def _scalar(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidMessage(f"{name} must be finite")
    if not isinstance(value, Scalar):
        raise InvalidMessage(f"{name} must be bool, int, float or str")
    if isinstance(value, str):
        _str(name, value, MAX_TEXT)


def _metric(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{name} must be a number")


def _tensors(value: Any) -> TensorDict:
    if not isinstance(value, Mapping):
        raise InvalidMessage("tensors must be a mapping of name -> numpy array")
    for key, arr in value.items():
        _str("tensor name", key, 512, empty=False)
        if not isinstance(arr, np.ndarray) or arr.dtype.name not in ALLOWED_DTYPES:
            raise InvalidMessage(f"tensor {key!r} must be an ndarray of {sorted(ALLOWED_DTYPES)}")
    return dict(value)


class _Base:
    TYPE: ClassVar[FrameType]


@dataclass(frozen=True, slots=True)
class Hello(_Base):
    TYPE: ClassVar[FrameType] = FrameType.HELLO
    protocol_versions: tuple[int, ...]
    model_fingerprint: str
    capabilities: tuple[str, ...]
    sample_count: int
    last_global_version: int = -1
    client_name: str = ""  # identity only in --insecure plain-TCP mode (no certificate)
    # part -> short hash (base_model, lora, labels, template, privacy): lets a fingerprint
    # mismatch name what differs. Optional; older clients send none.
    fingerprint_parts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        versions, caps = self.protocol_versions, self.capabilities
        if not isinstance(versions, list | tuple) or not 0 < len(versions) <= 32:
            raise InvalidMessage("protocol_versions must list 1..32 versions")
        for v in versions:
            _int("protocol_versions[]", v, 1, 255)
        if not isinstance(caps, list | tuple) or len(caps) > 64:
            raise InvalidMessage("capabilities must be a sequence of <= 64 strings")
        for cap in caps:
            _str("capabilities[]", cap, empty=False)
        _set(self, "protocol_versions", tuple(versions))
        _set(self, "capabilities", tuple(caps))
        _str("model_fingerprint", self.model_fingerprint, empty=False)
        _int("sample_count", self.sample_count, 0)
        _int("last_global_version", self.last_global_version, -1)
        _str("client_name", self.client_name)
        parts = self.fingerprint_parts
        if not isinstance(parts, Mapping) or len(parts) > 16:
            raise InvalidMessage("fingerprint_parts must be a mapping of <= 16 entries")
        _set(self, "fingerprint_parts", _mapping("fingerprint_parts", parts, _part_hash))


def _part_hash(name: str, value: Any) -> None:
    _str(name, value, 64, empty=False)


@dataclass(frozen=True, slots=True)
class Welcome(_Base):
    TYPE: ClassVar[FrameType] = FrameType.WELCOME
    protocol_version: int
    client_id: str
    strategy: str
    strategy_params: Mapping[str, Scalar]
    global_version: int
    heartbeat_interval_s: float

    def __post_init__(self) -> None:
        _int("protocol_version", self.protocol_version, 1, 255)
        _str("client_id", self.client_id, empty=False)
        _str("strategy", self.strategy, empty=False)
        _set(self, "strategy_params", _mapping("strategy_params", self.strategy_params, _scalar))
        _int("global_version", self.global_version, -1)
        hb = _float("heartbeat_interval_s", self.heartbeat_interval_s, positive=True)
        _set(self, "heartbeat_interval_s", hb)


@dataclass(frozen=True, slots=True)
class GlobalModel(_Base):
    TYPE: ClassVar[FrameType] = FrameType.GLOBAL_MODEL
    version: int
    tensors: TensorDict = field(compare=False, repr=False)
    # raw, fp16 or int8 (never topk: a model is dense). A lossy one goes only to clients whose
    # Hello lists "global_encodings"; the server's own θ^v is then the decoded tensors.
    encoding: Encoding = Encoding.RAW

    def __post_init__(self) -> None:
        _int("version", self.version, 0)
        _set(self, "tensors", _tensors(self.tensors))
        _set(self, "encoding", _enum(Encoding, "encoding", self.encoding))
        if self.encoding is Encoding.TOPK:
            raise InvalidMessage("encoding: a global model is dense, topk is for updates")


@dataclass(frozen=True, slots=True)
class TrainRequest(_Base):
    TYPE: ClassVar[FrameType] = FrameType.TRAIN_REQUEST
    round: int
    base_version: int
    local_steps: int
    deadline_s: float

    def __post_init__(self) -> None:
        _int("round", self.round, 0)
        _int("base_version", self.base_version, 0)
        _int("local_steps", self.local_steps, 0)
        _set(self, "deadline_s", _float("deadline_s", self.deadline_s, positive=True))


@dataclass(frozen=True, slots=True)
class Update(_Base):
    TYPE: ClassVar[FrameType] = FrameType.UPDATE
    update_id: str
    base_version: int
    round: int
    sample_count: int
    trigger: TriggerReason
    metrics: Mapping[str, float]
    tensors: TensorDict = field(compare=False, repr=False)
    encoding: Encoding = Encoding.RAW

    def __post_init__(self) -> None:
        _str("update_id", self.update_id, empty=False)
        _int("base_version", self.base_version, 0)
        _int("round", self.round, -1)
        _int("sample_count", self.sample_count, 0)
        _set(self, "trigger", _enum(TriggerReason, "trigger", self.trigger))
        _set(self, "metrics", _mapping("metrics", self.metrics, _metric))
        _set(self, "tensors", _tensors(self.tensors))
        _set(self, "encoding", _enum(Encoding, "encoding", self.encoding))


@dataclass(frozen=True, slots=True)
class Ack(_Base):
    TYPE: ClassVar[FrameType] = FrameType.ACK
    update_id: str
    global_version: int

    def __post_init__(self) -> None:
        _str("update_id", self.update_id, empty=False)
        _int("global_version", self.global_version, -1)


@dataclass(frozen=True, slots=True)
class Reject(_Base):
    TYPE: ClassVar[FrameType] = FrameType.REJECT
    update_id: str  # "" when refusing a Hello (fingerprint_mismatch)
    code: RejectCode
    detail: str = ""

    def __post_init__(self) -> None:
        _str("update_id", self.update_id)
        _set(self, "code", _enum(RejectCode, "code", self.code))
        _str("detail", self.detail, MAX_TEXT)


MAX_KAPPA = 100.0  # a τ_ℓ beyond μ + 100·s never fires: larger values are an error


@dataclass(frozen=True, slots=True)
class Tuning(_Base):
    """Server -> client (only to clients whose Hello lists the ``tuning`` capability): the GSFS
    trigger thresholds the feedback loop chose at global version ``version`` (docs/feedback.md).
    The client uses them from its next trigger check until the next Tuning."""

    TYPE: ClassVar[FrameType] = FrameType.TUNING
    version: int
    perf_delta: float  # δ_perf, a change of the trigger metric: [0, 1]
    kappa: float  # κ of the gradient-norm threshold: [0, MAX_KAPPA]

    def __post_init__(self) -> None:
        _int("version", self.version, 0)
        delta = _float("perf_delta", self.perf_delta)
        kappa = _float("kappa", self.kappa)
        if not 0 <= delta <= 1:
            raise InvalidMessage(f"perf_delta must lie in [0, 1], got {delta!r}")
        if not 0 <= kappa <= MAX_KAPPA:
            raise InvalidMessage(f"kappa must lie in [0, {MAX_KAPPA:g}], got {kappa!r}")
        _set(self, "perf_delta", delta)
        _set(self, "kappa", kappa)


@dataclass(frozen=True, slots=True)
class Heartbeat(_Base):
    TYPE: ClassVar[FrameType] = FrameType.HEARTBEAT


@dataclass(frozen=True, slots=True)
class Error(_Base):
    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: ErrorCode
    detail: str = ""

    def __post_init__(self) -> None:
        _set(self, "code", _enum(ErrorCode, "code", self.code))
        _str("detail", self.detail, MAX_TEXT)


@dataclass(frozen=True, slots=True)
class Bye(_Base):
    TYPE: ClassVar[FrameType] = FrameType.BYE
    reason: str = ""  # human-readable
    code: ByeCode = ByeCode.UNSPECIFIED

    def __post_init__(self) -> None:
        _str("reason", self.reason, MAX_TEXT)
        _str("code", self.code)
        # A code added by a newer peer must not make its Bye unreadable: it reads as
        # "unspecified", which a client treats as "reconnect later" (the safe default).
        _set(self, "code", ByeCode(self.code) if self.code in _BYE_CODES else ByeCode.UNSPECIFIED)


Message = (
    Hello
    | Welcome
    | GlobalModel
    | TrainRequest
    | Update
    | Ack
    | Reject
    | Heartbeat
    | Error
    | Bye
    | Tuning
)
MESSAGE_TYPES: dict[FrameType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        GlobalModel,
        TrainRequest,
        Update,
        Ack,
        Reject,
        Heartbeat,
        Error,
        Bye,
        Tuning,
    )
}
TENSOR_MESSAGES = (GlobalModel, Update)
