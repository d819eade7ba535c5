"""Adaptive upload compression: pick raw / fp16 / int8 / top-k per upload, with error feedback.

``[upload] encoding = "adaptive"`` (docs/client.md, "Adaptive compression"). For each upload
the compressor encodes the delta every candidate way, measures what the server would rebuild,
and sends the fewest bytes whose relative reconstruction error ``||decode(encode(Δ')) - Δ'|| /
||Δ'||`` is within ``error_budget``. Raw is exact, so it is always a candidate. On a link fast
enough that raw goes out within ``raw_below_s`` (throughput measured from earlier uploads),
exactness costs nothing noticeable and raw is sent.

Error feedback: what a lossy encoding dropped (the residual ``Δ' - decode(encode(Δ'))``) is
added to the next upload's delta, so a lossy upload's error is carried forward instead of
lost. A GSFS client may upload twice against the same global version; its second delta is
measured from that same base and so already contains everything the first one dropped, and the
residual is then discarded instead of added (it would count twice). The residual is held in
memory: a restart loses at most one upload's rounding.

Local DP (`[privacy] mode = "local"`): the delta is privatised (clipped to C, Gaussian noise
from the CSPRNG, fedllm_core.privacy) before anything else here sees it, so the residual and
every encoding are post-processing of what the noise covers.

Pure numpy and the wire codec: no sockets, clock or torch; the caller passes durations in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from fedllm_core.privacy import LocalDp, LocalReport, NoiseSource, SystemRandom, local_privatise
from fedllm_proto.codec import Encoding, TensorDict, decode_body, encode_tensors

# Bytes are measured, not assumed; on a tie the earlier (more exact) encoding stays.
CANDIDATES = (Encoding.RAW, Encoding.FP16, Encoding.INT8, Encoding.TOPK)
THROUGHPUT_EMA = 0.5  # weight of the newest upload in the link throughput estimate


@dataclass(frozen=True, slots=True)
class Choice:
    """One upload's encoding, the tensors to send, and what to remember once it is sent."""

    encoding: Encoding
    tensors: TensorDict  # Δ' = Δ + carried residual (what is encoded)
    body_bytes: int  # the tensor body on the wire before framing/zstd
    raw_bytes: int
    relative_error: float
    base_version: int
    residual: TensorDict | None  # Δ' - rebuilt, kept for the next upload (lossy only)
    reason: str  # "budget" (fewest bytes within it), "fast_link", or "fixed"
    privacy: LocalReport | None = None  # local DP: the delta's norm, clip scale, noise std


def relative_error(sent: TensorDict, rebuilt: TensorDict) -> float:
    """||rebuilt - sent|| / ||sent|| over all float tensors (0 for an all-zero delta)."""
    err = norm = 0.0
    for name, arr in sent.items():
        a = np.asarray(arr, dtype=np.float64)
        b = np.asarray(rebuilt[name], dtype=np.float64)
        err += float(np.sum((b - a) ** 2))
        norm += float(np.sum(a * a))
    if not math.isfinite(err) or not math.isfinite(norm):
        return math.inf
    return math.sqrt(err / norm) if norm > 0 else 0.0


def round_trip(tensors: TensorDict, encoding: Encoding) -> tuple[TensorDict, int]:
    """What the server rebuilds from ``tensors`` sent with ``encoding``, and the body bytes."""
    body = encode_tensors(tensors, encoding)
    blob = memoryview(b"".join(body.segments))
    return decode_body(body.specs, blob), body.body_bytes


class LinkThroughput:
    """Bytes per second of recent uploads (an EMA); None until one upload was timed."""

    def __init__(self) -> None:
        self.bytes_per_s: float | None = None

    def observe(self, nbytes: int, seconds: float) -> None:
        if nbytes <= 0 or seconds <= 0:
            return
        rate = nbytes / seconds
        old = self.bytes_per_s
        self.bytes_per_s = (
            rate if old is None else THROUGHPUT_EMA * rate + (1 - THROUGHPUT_EMA) * old
        )

    def seconds_for(self, nbytes: int) -> float | None:
        return None if self.bytes_per_s is None else nbytes / self.bytes_per_s


class Compressor:
    """Chooses each upload's encoding; ``commit`` once that upload is on the wire.

    ``encoding`` is the setting: one of raw / fp16 / int8 / topk (fixed; lossy ones still get
    error feedback), or "adaptive"."""

    def __init__(
        self,
        encoding: str,
        error_budget: float,
        raw_below_s: float,
        error_feedback: bool,
        local_dp: LocalDp | None = None,
        source: NoiseSource | None = None,
    ) -> None:
        self.fixed = None if encoding == "adaptive" else Encoding(encoding)
        self.error_budget = error_budget
        self.raw_below_s = raw_below_s
        self.error_feedback = error_feedback
        self.link = LinkThroughput()
        self._residual: TensorDict | None = None
        self._residual_base = -1
        self.local_dp = local_dp
        self.source = source or SystemRandom()

    def choose(self, delta: TensorDict, base_version: int) -> Choice:
        report = None
        if self.local_dp is not None:
            delta, report = local_privatise(delta, self.local_dp, self.source)
        choice = self._choose(delta, base_version)
        return dataclasses.replace(choice, privacy=report) if report else choice

    def _choose(self, delta: TensorDict, base_version: int) -> Choice:
        sent = self._with_residual(delta, base_version)
        raw_bytes = encode_tensors(sent, Encoding.RAW).body_bytes  # raw segments are views
        exact = Choice(Encoding.RAW, sent, raw_bytes, raw_bytes, 0.0, base_version, None, "fixed")
        if self.fixed is Encoding.RAW:
            return exact
        if self.fixed is not None:
            return self._lossy(sent, self.fixed, raw_bytes, base_version, "fixed")
        raw_time = self.link.seconds_for(raw_bytes)
        if raw_time is not None and raw_time <= self.raw_below_s:
            return dataclasses.replace(exact, reason="fast_link")
        best = dataclasses.replace(exact, reason="budget")
        for encoding in CANDIDATES[1:]:
            choice = self._lossy(sent, encoding, raw_bytes, base_version, "budget")
            if choice.relative_error <= self.error_budget and choice.body_bytes < best.body_bytes:
                best = choice
        return best

    def _lossy(
        self, sent: TensorDict, encoding: Encoding, raw_bytes: int, base: int, reason: str
    ) -> Choice:
        rebuilt, nbytes = round_trip(sent, encoding)
        error = relative_error(sent, rebuilt)
        residual = _minus(sent, rebuilt) if self.error_feedback else None
        return Choice(encoding, sent, nbytes, raw_bytes, error, base, residual, reason)

    def commit(self, choice: Choice, nbytes_on_wire: int, seconds: float) -> None:
        """The upload went out: keep its residual for the next one, learn the link's speed."""
        self._residual = choice.residual
        self._residual_base = choice.base_version
        self.link.observe(nbytes_on_wire, seconds)

    def _with_residual(self, delta: TensorDict, base_version: int) -> TensorDict:
        carried = self._residual
        if carried is None or base_version <= self._residual_base:
            return delta  # nothing carried, or the new delta from the same base already has it
        out: TensorDict = {}
        for name, arr in delta.items():
            extra = carried.get(name)
            out[name] = (
                arr + extra.astype(arr.dtype)
                if extra is not None and extra.shape == arr.shape
                else arr
            )
        return out


def _minus(a: TensorDict, b: TensorDict) -> TensorDict:
    return {
        name: (np.asarray(arr, np.float32) - np.asarray(b[name], np.float32))
        for name, arr in a.items()
        if np.issubdtype(np.asarray(arr).dtype, np.floating)
    }
