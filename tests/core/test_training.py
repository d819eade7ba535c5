"""Tokenised splits, the local trainer (loss goes down, norms, optimizer state) and predict."""

import math

import numpy as np
import pytest
import torch

from fedllm_core.model import ModelSettings, build_model, layer_groups, trainable_state
from fedllm_core.training import LocalTrainer, TrainSettings, encode_split, predict, predict_logits

LABELS = ("benign", "malicious")
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TINY_GPT2 = {"n_embd": 32, "n_layer": 1, "n_head": 2}


def tiny(arch: str = "bert", overrides: dict | None = None, seed: int = 0, dtype="float32"):
    config = overrides or (TINY_BERT if arch == "bert" else TINY_GPT2)
    settings = ModelSettings(
        name=arch, random_init=True, config_overrides=config, lora_r=4, device="cpu", dtype=dtype
    )
    return build_model(settings, LABELS, seed=seed)


def learnable_texts(n: int = 64) -> tuple[list[str], list[int]]:
    """Label 1 flows say 'scan' and label 0 flows 'web', with varying lengths."""
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        word = "scan" if label else "web"
        texts.append(f"proto tcp {word} port {i % 9} " + "bytes " * (i % 5))
        labels.append(label)
    return texts, labels


def split_for(bundle, n: int = 64):
    texts, labels = learnable_texts(n)
    return encode_split(bundle.tokenizer, texts, labels, max_length=32)


def test_loss_goes_down_on_a_learnable_dataset():
    bundle = tiny()
    trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings(lr=2e-2, batch_size=16))
    losses = [trainer.step().loss for _ in range(40)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_loss_goes_down_under_bfloat16_autocast():
    bundle = tiny(dtype="bfloat16")
    trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings(lr=2e-2, batch_size=16))
    losses = [trainer.step().loss for _ in range(40)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_trained_model_classifies_its_training_data():
    bundle = tiny()
    split = split_for(bundle)
    trainer = LocalTrainer(bundle, split, TrainSettings(lr=2e-2, batch_size=16))
    for _ in range(40):
        trainer.step()
    assert trainer.evaluate(split)["accuracy"] == 1.0


def test_step_reports_one_gradient_norm_per_layer():
    bundle = tiny()
    trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings())
    stats = trainer.step()
    assert list(stats.layer_grad_norms) == list(layer_groups(trainable_state(bundle.model)))


def test_layer_norms_compose_to_the_global_norm():
    bundle = tiny()
    stats = LocalTrainer(bundle, split_for(bundle), TrainSettings()).step()
    combined = math.sqrt(sum(v * v for v in stats.layer_grad_norms.values()))
    assert combined == pytest.approx(stats.grad_norm, rel=1e-4)


def test_layer_norm_is_the_norm_of_its_gradients():
    bundle = tiny()
    trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings(grad_clip=0.0))
    stats = trainer.step()
    head = [p.grad for n, p in trainer.params.items() if n.startswith("classifier.")]
    expected = torch.sqrt(sum((g.double() ** 2).sum() for g in head)).item()
    assert stats.layer_grad_norms["classifier"] == pytest.approx(expected, rel=1e-4)


def test_gradients_are_clipped_to_grad_clip():
    bundle = tiny()
    trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings(grad_clip=1e-3))
    trainer.step()
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trainer.params.values()))
    assert total.item() <= 1e-3 * 1.001


def test_batch_stream_is_a_seeded_permutation_per_epoch():
    bundle = tiny()
    trainer = LocalTrainer(bundle, split_for(bundle, 64), TrainSettings(batch_size=16), seed=5)
    epoch = np.concatenate([trainer.stream.next() for _ in range(4)])
    assert sorted(epoch.tolist()) == list(range(64))


def test_same_seed_gives_same_data_order():
    bundle = tiny()
    split = split_for(bundle)
    a, b = (LocalTrainer(bundle, split, TrainSettings(), seed=3) for _ in range(2))
    assert all(np.array_equal(a.stream.next(), b.stream.next()) for _ in range(10))


def test_batches_are_padded_only_to_their_longest_prompt():
    bundle = tiny()
    split = split_for(bundle)
    shortest = np.argsort(split.lengths)[:4]
    ids, _, _ = split.batch(shortest, bundle.device)
    assert ids.shape[1] == int(split.lengths[shortest].max()) < split.input_ids.shape[1]


def test_attention_mask_counts_each_prompts_tokens():
    bundle = tiny()
    split = split_for(bundle)
    idx = np.arange(8)
    _, mask, _ = split.batch(idx, bundle.device)
    assert mask.sum(dim=1).tolist() == split.lengths[idx].tolist()


def test_tokenisation_is_cached_in_memory():
    bundle = tiny()
    texts, labels = learnable_texts(10)
    first = encode_split(bundle.tokenizer, texts, labels, 32)
    assert encode_split(bundle.tokenizer, texts, labels, 32).input_ids is first.input_ids


def test_tokenisation_cache_on_disk_is_reused(tmp_path, monkeypatch):
    import fedllm_core.training as training

    bundle = tiny()
    texts, labels = learnable_texts(10)
    first = encode_split(bundle.tokenizer, texts, labels, 32, cache_dir=tmp_path)
    monkeypatch.setattr(training, "_memory_cache", training.OrderedDict())
    monkeypatch.setattr(training, "_tokenize", lambda *a: pytest.fail("tokenised twice"))
    again = encode_split(bundle.tokenizer, texts, labels, 32, cache_dir=tmp_path)
    assert np.array_equal(first.input_ids, again.input_ids)


def test_unlabelled_split_for_inference():
    bundle = tiny()
    split = encode_split(bundle.tokenizer, ["proto tcp scan"], None, 32)
    assert split.labels.tolist() == [-1]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_batched_prediction_equals_one_at_a_time(arch):
    # padding must be invisible: right padding + attention mask (+ last real token for GPT-2)
    bundle = tiny(arch)
    split = split_for(bundle, 12)
    batched = predict_logits(bundle, split, batch_size=12)
    single = predict_logits(bundle, split, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_predict_returns_one_label_per_sample():
    bundle = tiny()
    split = split_for(bundle, 10)
    assert predict(bundle, split).shape == (10,)


def test_evaluate_max_samples_scores_a_subset():
    bundle = tiny()
    split = split_for(bundle)
    trainer = LocalTrainer(bundle, split, TrainSettings())
    assert set(trainer.evaluate(split, max_samples=8)) >= {"accuracy", "f1_macro", "loss"}


def test_optimizer_state_restores_training_exactly():
    overrides = {**TINY_BERT, **NO_DROPOUT}
    bundle_a = tiny(overrides=overrides)
    split = split_for(bundle_a)
    a = LocalTrainer(bundle_a, split, TrainSettings(), seed=1)
    for _ in range(3):
        a.step()
    bundle_b = tiny(overrides=overrides, seed=7)
    from fedllm_core.model import load_trainable_state

    load_trainable_state(bundle_b.model, trainable_state(bundle_a.model))
    b = LocalTrainer(bundle_b, split, TrainSettings(), seed=1)
    b.load_optimizer_state(a.optimizer_state())
    a.step()
    b.step()
    state_a, state_b = trainable_state(bundle_a.model), trainable_state(bundle_b.model)
    assert all(np.array_equal(state_a[k], state_b[k]) for k in state_a)


def test_optimizer_state_is_a_flat_dict_of_arrays():
    bundle = tiny()
    trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings())
    trainer.step()
    assert all(isinstance(v, np.ndarray) for v in trainer.optimizer_state().values())


def test_reset_optimizer_forgets_the_moments():
    bundle = tiny()
    trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings())
    trainer.step()
    trainer.reset_optimizer()
    assert not any(k.startswith("adam.") for k in trainer.optimizer_state())


def _mean_p_malicious(bundle, split) -> float:
    logits = torch.from_numpy(predict_logits(bundle, split))
    return float(torch.softmax(logits, dim=-1)[:, 1].mean())


def _one_class_shift(**train) -> float:
    """How far 20 steps on an all-malicious share move the mean P(malicious) of a probe set."""
    bundle = tiny()
    probe = split_for(bundle)
    texts, _ = learnable_texts(64)
    one_class = encode_split(bundle.tokenizer, texts, [1] * 64, max_length=32)
    before = _mean_p_malicious(bundle, probe)
    trainer = LocalTrainer(bundle, one_class, TrainSettings(lr=2e-2, batch_size=16, **train))
    for _ in range(20):
        trainer.step()
    return _mean_p_malicious(bundle, probe) - before


def test_adjusted_and_proximal_loss_keeps_a_one_class_client_from_moving_the_prior():
    """Plain CE on an all-malicious share drags every prediction to malicious. The adjusted
    loss explains that share by the prior, and the proximal term ends the walk AdamW would
    still take along the tiny remaining gradient (the logit adjustment alone does not)."""
    plain = _one_class_shift()
    adjusted = _one_class_shift(logit_adjustment=1.0)
    both = _one_class_shift(logit_adjustment=1.0, prox_mu=1.0)
    assert plain > 0.3
    assert adjusted > 0.5 * plain  # Adam: a small gradient still takes full-size steps
    assert abs(both) < 0.25 * plain


def test_proximal_term_pulls_training_back_to_the_anchor():
    distances = {}
    for mu in (0.0, 10.0):
        bundle = tiny()
        trainer = LocalTrainer(bundle, split_for(bundle), TrainSettings(lr=2e-2, prox_mu=mu))
        start = [p.detach().clone() for p in trainer.params.values()]
        for _ in range(20):
            trainer.step()
        pairs = zip(trainer.params.values(), start, strict=True)
        moved = sum(float((p.detach() - s).norm() ** 2) for p, s in pairs)
        distances[mu] = moved**0.5
    assert distances[10.0] < 0.5 * distances[0.0]


def test_logit_adjustment_changes_nothing_on_balanced_data():
    """log π is the same for every class when the share is balanced: softmax ignores it."""
    losses = {}
    for tau in (0.0, 1.0):
        bundle = tiny()
        settings = TrainSettings(lr=2e-2, batch_size=16, logit_adjustment=tau)
        trainer = LocalTrainer(bundle, split_for(bundle), settings, seed=0)
        losses[tau] = [trainer.step().loss for _ in range(5)]
    assert losses[1.0] == pytest.approx(losses[0.0], rel=1e-5)
