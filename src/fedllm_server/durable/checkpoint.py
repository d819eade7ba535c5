"""Crash-safe checkpoints of the global model and the strategy state.

One generation = three files in ``<state_dir>/checkpoints``:
``global-<v>.safetensors`` (the global adapter + head, loadable by any safetensors tool),
``strategy-<v>.safetensors`` (strategy arrays, e.g. FedOpt moments) and ``checkpoint-<v>.json``
(version, strategy scalars, metrics, sha256 of both tensor files, and its own checksum).
Every file is created 0600 (the directory 0700): the model is the federation's, not the host's.
Every file is written temp + fsync + rename, then the directory is fsynced; the manifest is
written last, so it is the commit point: a generation without a valid manifest does not exist.
Loading walks generations newest first and returns the first whose checksums all match, so a
corrupted or truncated latest checkpoint falls back to the previous good one. The two newest
generations are kept. The federated state is float32 (docs/architecture.md); safetensors' numpy
loader has no bfloat16, so callers keep the state in float32. Pure file I/O on numpy arrays;
no asyncio (callers run it in a thread).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.numpy

from fedllm_core.files import atomic_write
from fedllm_core.tensorfile import write_safetensors
from fedllm_server.durable.private import PRIVATE_MODE
from fedllm_server.tensors import TensorDict

KEEP_GENERATIONS = 2
_MANIFEST = re.compile(r"^checkpoint-(\d{8})\.json$")


class CheckpointError(Exception):
    """A checkpoint generation failed its integrity checks."""


@dataclass(frozen=True)
class Checkpoint:
    """One durable generation: what a restarted server resumes from."""

    version: int
    global_state: TensorDict
    strategy_arrays: TensorDict = field(default_factory=dict)
    strategy_meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    checkpoint: Checkpoint | None
    skipped: list[tuple[int, str]]  # (version, why) of generations that failed their checks


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_checksum(body: dict[str, Any]) -> str:
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


class CheckpointStore:
    """Writes and loads checkpoint generations under one directory."""

    def __init__(self, directory: Path, keep: int = KEEP_GENERATIONS) -> None:
        self.directory = directory
        self.keep = max(2, keep)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _paths(self, version: int) -> tuple[Path, Path, Path]:
        stem = f"{version:08d}"
        d = self.directory
        return (
            d / f"global-{stem}.safetensors",
            d / f"strategy-{stem}.safetensors",
            d / f"checkpoint-{stem}.json",
        )

    def save(self, ckpt: Checkpoint) -> Path:
        """Durably write one generation, then prune all but the newest ``keep``."""
        global_path, strategy_path, manifest_path = self._paths(ckpt.version)
        body = {
            "format": 1,
            "version": ckpt.version,
            "global_sha256": write_safetensors(global_path, ckpt.global_state, PRIVATE_MODE),
            "strategy_sha256": write_safetensors(strategy_path, ckpt.strategy_arrays, PRIVATE_MODE),
            "strategy_meta": ckpt.strategy_meta,
            "metrics": ckpt.metrics,
        }
        body["checksum"] = _manifest_checksum(body)
        manifest = json.dumps(body, indent=1, sort_keys=True).encode()
        atomic_write(manifest_path, manifest, PRIVATE_MODE)
        self._prune()
        return manifest_path

    def versions(self) -> list[int]:
        """Versions that have a manifest on disk, newest first (not yet verified)."""
        found = []
        for entry in self.directory.iterdir():
            match = _MANIFEST.match(entry.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found, reverse=True)

    def load_latest(self) -> LoadResult:
        """The newest generation that passes every checksum, and why newer ones were skipped."""
        skipped: list[tuple[int, str]] = []
        for version in self.versions():
            try:
                return LoadResult(self.load(version), skipped)
            except CheckpointError as exc:
                skipped.append((version, str(exc)))
        return LoadResult(None, skipped)

    def load(self, version: int) -> Checkpoint:
        global_path, strategy_path, manifest_path = self._paths(version)
        body = self._read_manifest(manifest_path)
        global_state = self._read_tensors(global_path, body["global_sha256"])
        strategy_arrays = self._read_tensors(strategy_path, body["strategy_sha256"])
        return Checkpoint(
            version=int(body["version"]),
            global_state=global_state,
            strategy_arrays=strategy_arrays,
            strategy_meta=dict(body.get("strategy_meta", {})),
            metrics=dict(body.get("metrics", {})),
        )

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            body = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: unreadable manifest ({exc})") from exc
        if not isinstance(body, dict) or "checksum" not in body:
            raise CheckpointError(f"{path.name}: manifest has no checksum")
        claimed = body.pop("checksum")
        if claimed != _manifest_checksum(body):
            raise CheckpointError(f"{path.name}: manifest checksum mismatch")
        return body

    @staticmethod
    def _read_tensors(path: Path, sha256: str) -> TensorDict:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path.name}: unreadable ({exc})") from exc
        if _sha256(data) != sha256:
            raise CheckpointError(f"{path.name}: checksum mismatch (corrupted or truncated)")
        return dict(safetensors.numpy.load(data))

    def _prune(self) -> None:
        for version in self.versions()[self.keep :]:
            for path in self._paths(version):
                path.unlink(missing_ok=True)
