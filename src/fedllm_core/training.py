"""Local training and inference: tokenised splits, the AdamW step loop, prediction.

Rules: a split is tokenised once (cached in memory and optionally on disk) into a padded id
matrix plus lengths; each batch is cut to its own longest prompt (dynamic padding: the main CPU
cost saving). Batches come from an endless stream of seeded per-epoch permutations, so a
trainer's data order is a function of (seed, epoch, position) and can be persisted as two ints.
``StepStats.layer_grad_norms`` are the L2 norms of the current step's gradient per layer (one
LoRA A/B pair or one head module), taken before clipping. Inference sorts by length, runs under
``torch.inference_mode``; bf16 autocast when the bundle's dtype is bf16 (CUDA, AMX CPUs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedllm_core.errors import ModelError
from fedllm_core.lora import layer_groups, trainable_parameters
from fedllm_core.metrics import classification_metrics
from fedllm_core.model import ModelBundle
from fedllm_core.train_settings import TrainSettings

__all__ = [
    "EncodedSplit",
    "LocalTrainer",
    "StepStats",
    "TrainSettings",
    "autocast",
    "encode_split",
    "predict",
    "predict_logits",
]


@dataclass(frozen=True)
class EncodedSplit:
    """A tokenised split: right-padded ids, true lengths and label ids (-1: unlabelled)."""

    input_ids: np.ndarray  # (N, L) int32, padded with pad_id; L = longest prompt
    lengths: np.ndarray  # (N,) int32 tokens per prompt
    labels: np.ndarray  # (N,) int64
    pad_id: int
    # (N,) int64 flows each sample stands for (a distinct text seen k times weighs k); None = 1.
    weights: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def subset(self, indices: np.ndarray) -> EncodedSplit:
        lengths = self.lengths[indices]
        width = int(lengths.max()) if lengths.size else 0
        weights = None if self.weights is None else self.weights[indices]
        return EncodedSplit(
            self.input_ids[indices, :width], lengths, self.labels[indices], self.pad_id, weights
        )

    def batch(
        self, indices: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, T) int64, attention mask (B, T) int64, labels (B,) int64; T = batch's longest."""
        lengths = self.lengths[indices]  # (B,)
        width = int(lengths.max())
        ids = torch.from_numpy(self.input_ids[indices, :width]).long()  # (B, T)
        mask = (torch.arange(width) < torch.from_numpy(lengths)[:, None]).long()  # (B, T)
        labels = torch.from_numpy(self.labels[indices])  # (B,)
        if device.type != "cpu":
            return ids.to(device), mask.to(device), labels.to(device)
        return ids, mask, labels


_CACHE_SIZE = 16  # tokenised splits kept in memory (LRU); live inference must not grow it
_memory_cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_tokenizer_keys: dict[int, tuple[Any, str]] = {}
_cache_lock = threading.Lock()


def _tokenizer_key(tokenizer: Any) -> str:
    """Content hash of a tokenizer (its serialised vocab/rules when fast), cached by identity."""
    known = _tokenizer_keys.get(id(tokenizer))
    if known is not None and known[0] is tokenizer:
        return known[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab()))
    digest = hashlib.sha256(f"{type(tokenizer).__name__}|{content}".encode()).hexdigest()
    _tokenizer_keys[id(tokenizer)] = (tokenizer, digest)
    return digest


def _texts_key(tokenizer: Any, texts: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256(f"{_tokenizer_key(tokenizer)}|{max_length}|{len(texts)}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int32, count=len(encoded))
    width = int(lengths.max()) if lengths.size else 0
    matrix = np.full((len(encoded), width), tokenizer.pad_token_id, dtype=np.int32)  # (N, L)
    for row, ids in enumerate(encoded):
        matrix[row, : len(ids)] = ids
    return matrix, lengths


def _save_npz(path: Path, ids: np.ndarray, lengths: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, input_ids=ids, lengths=lengths)
    os.replace(tmp, path)  # atomic: concurrent clients never read a torn file


def _load_or_tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    key = _texts_key(tokenizer, texts, max_length)
    path = cache_dir / f"tokens-{key[:32]}.npz" if cache_dir is not None else None
    with _cache_lock:
        result = _memory_cache.get(key)
    if result is None and path is not None and path.is_file():
        with np.load(path) as stored:
            result = (stored["input_ids"], stored["lengths"])
    if result is None:
        result = _tokenize(tokenizer, texts, max_length)
    if path is not None and not path.is_file():
        _save_npz(path, *result)
    with _cache_lock:  # trainer and evaluation threads may encode at the same time
        _memory_cache[key] = result
        _memory_cache.move_to_end(key)
        if len(_memory_cache) > _CACHE_SIZE:
            _memory_cache.popitem(last=False)
    return result


def encode_split(
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray | None,
    max_length: int,
    *,
    cache_dir: Path | str | None = None,
    weights: Sequence[int] | np.ndarray | None = None,
) -> EncodedSplit:
    """Tokenise ``texts`` (truncated to ``max_length``) once; cached by tokenizer + texts hash.

    ``labels`` None marks every sample unlabelled (-1), e.g. for live inference. ``weights``
    (flows per sample) make metrics count a deduplicated text once per flow it stands for.
    """
    if labels is not None and len(labels) != len(texts):
        raise ModelError(f"{len(texts)} texts but {len(labels)} labels")
    directory = Path(cache_dir) if cache_dir is not None else None
    ids, lengths = _load_or_tokenize(tokenizer, texts, max_length, directory)
    label_ids = (
        np.full(len(texts), -1, dtype=np.int64)
        if labels is None
        else np.asarray(labels, dtype=np.int64).reshape(len(texts))
    )
    counts = None if weights is None else np.asarray(weights, dtype=np.int64).reshape(len(texts))
    return EncodedSplit(ids, lengths, label_ids, int(tokenizer.pad_token_id), counts)


@dataclass(frozen=True)
class StepStats:
    step: int  # optimizer steps taken by this trainer, this one included
    loss: float  # mean cross-entropy of the batch
    grad_norm: float  # global L2 norm of the gradient before clipping
    layer_grad_norms: dict[str, float]  # layer -> L2 norm of its gradient before clipping


def autocast(bundle: ModelBundle) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast when the bundle computes in bf16 (CUDA, AMX CPUs); else a no-op."""
    if bundle.compute_dtype != torch.float32:  # bf16 matmuls; fp32 where autocast says so
        return torch.autocast(bundle.device.type, dtype=bundle.compute_dtype)
    return contextlib.nullcontext()


class _BatchStream:
    """Endless batches of indices: epoch e is ``default_rng((seed, e)).permutation(n)``."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise ModelError("cannot train on an empty split")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.n)

    def seek(self, epoch: int, pos: int) -> None:
        self.epoch, self.pos = epoch, pos
        self._order = self._permutation(epoch)

    def next(self) -> np.ndarray:
        if self.pos + self.batch_size > self.n:  # a short tail is skipped: equal-sized batches
            self.seek(self.epoch + 1, 0)
        batch = self._order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch


class LocalTrainer:
    """AdamW over the bundle's trainable parameters on one client's training split."""

    def __init__(
        self,
        bundle: ModelBundle,
        train: EncodedSplit,
        settings: TrainSettings,
        seed: int | None = None,
    ) -> None:
        if train.labels.size and train.labels.min() < 0:
            raise ModelError("training split has unlabelled samples")
        self.bundle, self.train, self.settings = bundle, train, settings
        self.seed = settings.seed if seed is None else seed
        self.params = trainable_parameters(bundle.model)
        self._param_list = list(self.params.values())
        names = list(self.params)
        self._layers = list(layer_groups(names))
        position = {name: i for i, name in enumerate(names)}
        layer_of_param = [0] * len(names)
        for layer_index, members in enumerate(layer_groups(names).values()):
            for name in members:
                layer_of_param[position[name]] = layer_index
        self._layer_index = torch.tensor(layer_of_param, device=bundle.device)  # (P,)
        self.stream = _BatchStream(len(train), settings.batch_size, self.seed)
        self._logit_offset = _logit_offset(train, bundle, settings.logit_adjustment)  # (C,)
        self._anchor: list[torch.Tensor] = []  # θ_anchor per parameter (prox_mu > 0 only)
        self.set_anchor()
        self.steps = 0
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.AdamW:
        s = self.settings
        return torch.optim.AdamW(
            self._param_list, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, foreach=True
        )

    def step(self) -> StepStats:
        """One optimizer step on the next batch."""
        model = self.bundle.model
        model.train()
        ids, mask, labels = self.train.batch(self.stream.next(), self.bundle.device)
        with autocast(self.bundle):
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, C)
        loss = F.cross_entropy(logits.float() + self._logit_offset, labels)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self._proximal_term()).backward()
        total, layer_norms = self._grad_norms_and_clip()
        self.optimizer.step()
        self.steps += 1
        return StepStats(
            step=self.steps,
            loss=float(loss.detach()),
            grad_norm=total,
            layer_grad_norms=dict(zip(self._layers, layer_norms, strict=True)),
        )

    def set_anchor(self) -> None:
        """The current parameters become θ_anchor of the proximal term (call on a new global)."""
        if self.settings.prox_mu > 0:
            self._anchor = [param.detach().clone() for param in self._param_list]

    def _proximal_term(self) -> torch.Tensor | float:
        if not self._anchor:
            return 0.0
        drift = torch._foreach_sub([p.float() for p in self._param_list], self._anchor)
        squares = torch.stack(torch._foreach_norm(drift)) ** 2  # (P,)
        return 0.5 * self.settings.prox_mu * squares.sum()

    def _grad_norms_and_clip(self) -> tuple[float, list[float]]:
        """Per-layer and global gradient norms from one fused pass; clip in place."""
        grads = []
        for param in self._param_list:
            if param.grad is None:  # e.g. a head module unused by this architecture
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
        squares = torch.stack(torch._foreach_norm(grads)).float() ** 2  # (P,)
        per_layer = torch.zeros(len(self._layers), device=squares.device)  # (L,)
        per_layer.index_add_(0, self._layer_index, squares)
        total = squares.sum().sqrt()
        if self.settings.grad_clip > 0:
            coef = (self.settings.grad_clip / (total + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, coef)
        values = torch.cat([total.reshape(1), per_layer.sqrt()]).tolist()  # one host sync
        return values[0], values[1:]

    def evaluate(self, split: EncodedSplit, max_samples: int | None = None) -> dict[str, float]:
        """Metrics (``classification_metrics`` + mean ``loss``) on ``split`` or a seeded subset."""
        if max_samples is not None and max_samples < len(split):
            pick = np.random.default_rng(self.seed).choice(len(split), max_samples, replace=False)
            split = split.subset(np.sort(pick))
        return evaluate(self.bundle, split, self.settings.eval_batch_size)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW moments + data-stream position as a flat dict of arrays (client persistence)."""
        out: dict[str, np.ndarray] = {
            "trainer.steps": np.array(self.steps, dtype=np.int64),
            "stream.epoch": np.array(self.stream.epoch, dtype=np.int64),
            "stream.pos": np.array(self.stream.pos, dtype=np.int64),
        }
        for name, param in self.params.items():
            for key, value in self.optimizer.state.get(param, {}).items():
                array = value.detach().to("cpu", torch.float64 if key == "step" else torch.float32)
                out[f"adam.{key}.{name}"] = np.ascontiguousarray(array.numpy()).copy()
        return out

    def load_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``optimizer_state`` returned (names must match this model)."""
        self.optimizer = self._new_optimizer()
        self.steps = int(state["trainer.steps"])
        self.stream.seek(int(state["stream.epoch"]), int(state["stream.pos"]))
        for key, array in state.items():
            if not key.startswith("adam."):
                continue
            _, slot, name = key.split(".", 2)
            if name not in self.params:
                raise ModelError(f"optimizer state for unknown parameter {name!r}")
            param = self.params[name]
            dtype = torch.float32 if slot == "step" else param.dtype
            value = torch.from_numpy(np.array(array)).to(dtype)
            if slot != "step":
                value = value.to(param.device)
            self.optimizer.state[param][slot] = value

    def reset_optimizer(self) -> None:
        """Fresh AdamW moments (e.g. after swapping in a new global model)."""
        self.optimizer = self._new_optimizer()


def _logit_offset(train: EncodedSplit, bundle: ModelBundle, tau: float) -> torch.Tensor:
    """τ·log π with π the smoothed label frequencies of ``train``: (C,) float32 (0 when τ = 0)."""
    classes = len(bundle.labels)
    if tau == 0:
        return torch.zeros(classes, device=bundle.device)
    counts = np.bincount(train.labels, minlength=classes).astype(np.float64) + 1.0
    prior = torch.from_numpy(np.log(counts / counts.sum())).float()
    return (tau * prior).to(bundle.device)


def _batches(split: EncodedSplit, batch_size: int) -> Iterator[np.ndarray]:
    order = np.argsort(-split.lengths, kind="stable")  # longest first: little padding per batch
    for start in range(0, len(split), batch_size):
        yield order[start : start + batch_size]


def predict_logits(bundle: ModelBundle, split: EncodedSplit, batch_size: int = 64) -> np.ndarray:
    """(N, num_labels) float32 logits for every sample, in the split's order."""
    model = bundle.model
    was_training = model.training
    model.eval()
    out = np.empty((len(split), bundle.num_labels), dtype=np.float32)
    try:
        with torch.inference_mode(), autocast(bundle):
            for idx in _batches(split, batch_size):
                ids, mask, _ = split.batch(idx, bundle.device)
                logits = model(input_ids=ids, attention_mask=mask).logits  # (B, C)
                out[idx] = logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def predict(bundle: ModelBundle, split: EncodedSplit, batch_size: int = 64) -> np.ndarray:
    """(N,) int64 predicted label ids."""
    return predict_logits(bundle, split, batch_size).argmax(axis=1).astype(np.int64)


def evaluate(bundle: ModelBundle, split: EncodedSplit, batch_size: int = 64) -> dict[str, float]:
    """``classification_metrics`` plus mean cross-entropy ``loss`` of ``split`` (per flow)."""
    logits = predict_logits(bundle, split, batch_size)  # (N, C)
    labels, weights = split.labels, split.weights
    losses = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="none")
    loss = float(np.average(losses.numpy(), weights=weights))
    pred = logits.argmax(axis=1)
    metrics = classification_metrics(labels, pred, bundle.num_labels, weights=weights)
    return {**metrics, "loss": loss}
