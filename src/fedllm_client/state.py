"""The client's local state on disk: what a restarted client needs to continue, not start over.

Rules: the commit point is ``state.json``, written last with temp file + fsync + rename (+ fsync
of the directory). Tensor blobs (local model θ_i, the global model θ^v it is based on, the last
locally trained model, the optimizer moments; all safetensors) are content files named by
generation and listed in the manifest with their sha256, so a crash mid-save leaves the previous
manifest and its files intact, and a corrupted or truncated blob is detected on load
(``StateError``). A blob that did not change since the previous save (the base model between
broadcasts) is not rewritten.
No torch here: the optimizer state arrives as a TensorDict from the trainer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.numpy import load as st_load

from fedllm_core.errors import FedllmError
from fedllm_core.files import atomic_write
from fedllm_core.tensorfile import write_safetensors
from fedllm_proto.codec import TensorDict

MANIFEST = "state.json"
FORMAT = 1
BLOBS = ("local", "base", "trained", "optimizer")


class StateError(FedllmError):
    """The persisted state is unreadable or fails its checksum."""


@dataclass
class ClientState:
    """Everything the daemon persists. Tensors are float32 TensorDicts (or None before the first
    global model); counters are plain ints; ``trigger`` is the trigger policy's state as JSON."""

    fingerprint: str = ""  # model fingerprint the tensors belong to
    base_version: int = -1  # global version θ_i was started from (-1: none yet)
    steps_used: int = 0  # local optimizer steps spent out of max_total_steps
    uploads: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    last_round: int = -1  # last sync round answered
    upload_seq: int = 0  # makes update ids unique across restarts
    steps_since_upload: int = 0
    changed_since_upload: bool = False  # trained since the last upload (final GSFS upload)
    trained_on_base: bool = False  # the working model was trained since base was loaded
    trigger: dict[str, Any] = field(default_factory=dict)
    local: TensorDict | None = None  # θ_i: the working model
    base: TensorDict | None = None  # θ^{base_version}
    trained: TensorDict | None = None  # last locally trained θ_i (final_eval evaluates it)
    optimizer: TensorDict | None = None


class StateStore:
    """Load/save ``ClientState`` under one directory (the systemd StateDirectory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._manifest: dict[str, Any] | None = None
        # kind -> the object last written: an unchanged blob is the very same object (kept
        # referenced so identity cannot be recycled by a new object)
        self._written: dict[str, object] = {}

    def exists(self) -> bool:
        return (self.directory / MANIFEST).is_file()

    def load(self) -> ClientState | None:
        """The last committed state, None if there is none; ``StateError`` if it is damaged."""
        path = self.directory / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: unreadable state manifest: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise StateError(f"{path}: unknown state format {manifest.get('format')!r}")
        state = ClientState(**manifest["counters"], trigger=manifest.get("trigger", {}))
        for kind, entry in manifest["files"].items():
            setattr(state, kind, dict(st_load(self._read_checked(entry))))
        self._manifest = manifest
        return state

    def _read_checked(self, entry: Mapping[str, str]) -> bytes:
        path = self.directory / entry["name"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StateError(f"{path}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StateError(f"{path}: checksum mismatch (truncated or corrupted)")
        return data

    def save(self, state: ClientState, *, with_tensors: bool = True) -> None:
        """Commit ``state``: new blobs first, then the manifest (the commit point).

        ``with_tensors=False`` keeps counters only (a model whose tensors are derivable)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self._manifest or {"generation": 0, "files": {}}
        generation = int(previous["generation"]) + 1
        files: dict[str, dict[str, str]] = {}
        for kind in BLOBS if with_tensors else ():
            value = getattr(state, kind)
            if value is None:
                continue
            old = previous["files"].get(kind)
            if old is not None and self._written.get(kind) is value:
                files[kind] = old  # same object as last time: unchanged, keep the file
                continue
            files[kind] = self._write_blob(kind, value, generation)
            self._written[kind] = value
        manifest = {
            "format": FORMAT,
            "generation": generation,
            "counters": _counters(state),
            "trigger": state.trigger,
            "files": files,
        }
        atomic_write(self.directory / MANIFEST, json.dumps(manifest, indent=1).encode())
        self._manifest = manifest
        self._remove_unlisted(files)

    def _write_blob(self, kind: str, value: TensorDict, generation: int) -> dict[str, str]:
        name = f"{kind}.{generation}.safetensors"
        return {"name": name, "sha256": write_safetensors(self.directory / name, value)}

    def _remove_unlisted(self, files: Mapping[str, Mapping[str, str]]) -> None:
        keep = {entry["name"] for entry in files.values()} | {MANIFEST}
        for path in self.directory.iterdir():
            if path.is_file() and path.name.split(".")[0] in BLOBS and path.name not in keep:
                path.unlink(missing_ok=True)


def _counters(state: ClientState) -> dict[str, Any]:
    skip = set(BLOBS) | {"trigger"}
    return {k: v for k, v in state.__dict__.items() if k not in skip}
