"""Model building, the trainable state <-> arrays, layer groups and the fingerprint."""

import numpy as np
import pytest
import torch

from fedllm_core.embedded import resolve_model_path, verify_sha256
from fedllm_core.errors import ModelError
from fedllm_core.model import (
    ModelSettings,
    build_model,
    layer_groups,
    load_trainable_state,
    model_fingerprint,
    trainable_state,
)

LABELS = ("benign", "malicious")
TINY = {
    "bert": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "opt": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "ffn_dim": 64,
        "word_embed_proj_dim": 32,
    },
    "gpt2": {"n_embd": 32, "n_layer": 1, "n_head": 2},
    "llama": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
}
HEAD = {"bert": "classifier", "opt": "score", "gpt2": "score", "llama": "score"}


def tiny_settings(arch: str = "bert", **changes) -> ModelSettings:
    fields = {"lora_r": 4, "device": "cpu", "dtype": "float32", **changes}
    return ModelSettings(name=arch, random_init=True, config_overrides=TINY[arch], **fields)


def random_state(template: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in template.items()}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_trainable_state_round_trips_bit_exactly_into_a_fresh_model(arch):
    sent = random_state(trainable_state(build_model(tiny_settings(arch), LABELS).model), 1)
    fresh = build_model(tiny_settings(arch), LABELS, seed=99).model
    load_trainable_state(fresh, sent)
    received = trainable_state(fresh)
    assert (
        all(np.array_equal(sent[k], received[k]) for k in sent) and sent.keys() == received.keys()
    )


@pytest.mark.parametrize("arch", sorted(TINY))
def test_head_travels_in_the_trainable_state(arch):
    names = trainable_state(build_model(tiny_settings(arch), LABELS).model)
    assert f"{HEAD[arch]}.weight" in names


def test_state_arrays_are_plain_contiguous_float32():
    state = trainable_state(build_model(tiny_settings(), LABELS).model)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in state.values())


def test_state_is_a_copy_not_a_view_of_live_parameters():
    bundle = build_model(tiny_settings(), LABELS)
    before = trainable_state(bundle.model)
    load_trainable_state(bundle.model, random_state(before, 2))
    assert (
        np.array_equal(
            before["classifier.weight"], trainable_state(bundle.model)["classifier.weight"]
        )
        is False
    )


def test_frozen_base_is_identical_whatever_the_client_seed():
    a, b = (build_model(tiny_settings(), LABELS, seed=s).model for s in (1, 2))
    frozen_a = {n: p for n, p in a.named_parameters() if not p.requires_grad}
    frozen_b = {n: p for n, p in b.named_parameters() if not p.requires_grad}
    assert all(frozen_a[n].equal(frozen_b[n]) for n in frozen_a)


def test_partial_load_writes_only_the_given_names():
    bundle = build_model(tiny_settings(), LABELS)
    before = trainable_state(bundle.model)
    update = {"classifier.bias": np.array([3.0, -3.0], dtype=np.float32)}
    load_trainable_state(bundle.model, update, partial=True)
    after = trainable_state(bundle.model)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"classifier.bias"}


def test_full_load_refuses_missing_names():
    bundle = build_model(tiny_settings(), LABELS)
    state = trainable_state(bundle.model)
    state.pop("classifier.bias")
    with pytest.raises(ModelError, match="missing"):
        load_trainable_state(bundle.model, state)


def test_load_refuses_unknown_names():
    bundle = build_model(tiny_settings(), LABELS)
    with pytest.raises(ModelError, match="unknown"):
        load_trainable_state(bundle.model, {"nope.weight": np.zeros(2, np.float32)}, partial=True)


def test_load_refuses_wrong_shape_before_writing_anything():
    bundle = build_model(tiny_settings(), LABELS)
    before = trainable_state(bundle.model)
    bad = random_state(before, 3)
    bad["classifier.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ModelError, match="shape"):
        load_trainable_state(bundle.model, bad)
    assert all(np.array_equal(before[k], v) for k, v in trainable_state(bundle.model).items())


def test_layer_groups_pair_lora_factors_and_keep_the_head_whole():
    names = [
        "bert.encoder.layer.0.attention.self.query.lora_A.weight",
        "bert.encoder.layer.0.attention.self.query.lora_B.weight",
        "classifier.bias",
        "classifier.weight",
    ]
    assert layer_groups(names) == {
        "bert.encoder.layer.0.attention.self.query": names[:2],
        "classifier": ["classifier.bias", "classifier.weight"],
    }


def test_every_trainable_name_belongs_to_one_layer():
    state = trainable_state(build_model(tiny_settings("gpt2"), LABELS).model)
    groups = layer_groups(state)
    assert sorted(n for members in groups.values() for n in members) == sorted(state)


def test_custom_target_modules_are_used():
    bundle = build_model(tiny_settings(target_modules=("query", "key", "value")), LABELS)
    assert any(".key.lora_A" in name for name in trainable_state(bundle.model))


def test_target_modules_that_match_nothing_are_an_error():
    with pytest.raises(ModelError):
        build_model(tiny_settings(target_modules=("no_such_module",)), LABELS)


def test_fingerprint_is_stable():
    settings = tiny_settings()
    assert model_fingerprint(settings, LABELS, "compact", 1) == model_fingerprint(
        settings, LABELS, "compact", 1
    )


@pytest.mark.parametrize(
    ("settings", "labels", "template", "version"),
    [
        (tiny_settings(lora_r=8), LABELS, "compact", 1),
        (tiny_settings(target_modules=("query",)), LABELS, "compact", 1),
        (tiny_settings(), ("malicious", "benign"), "compact", 1),
        (tiny_settings(), LABELS, "verbose", 1),
        (tiny_settings(), LABELS, "compact", 2),
        (ModelSettings(), LABELS, "compact", 1),
    ],
)
def test_fingerprint_changes_with_lora_labels_template_or_model(
    settings, labels, template, version
):
    reference = model_fingerprint(tiny_settings(), LABELS, "compact", 1)
    assert model_fingerprint(settings, labels, template, version) != reference


def test_fingerprint_ignores_device_and_threads():
    reference = model_fingerprint(tiny_settings(), LABELS, "compact", 1)
    assert model_fingerprint(tiny_settings(torch_threads=2), LABELS, "compact", 1) == reference


def test_fingerprint_accepts_a_template_object():
    class Template:
        name, version = "compact", 1

    settings = tiny_settings()
    assert model_fingerprint(settings, LABELS, Template()) == model_fingerprint(
        settings, LABELS, "compact", 1
    )


def test_weights_failing_the_sha256_check_are_refused(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not the weights")
    with pytest.raises(ModelError, match="integrity"):
        verify_sha256(weights, "0" * 64)


def test_unknown_embedded_model_is_an_error():
    with pytest.raises(ModelError, match="unknown embedded"):
        resolve_model_path("embedded:no-such-model")


def test_a_classifier_needs_two_labels():
    with pytest.raises(ModelError):
        build_model(tiny_settings(), ("only",))


def test_bfloat16_base_keeps_the_trainable_state_float32():
    model = build_model(tiny_settings(dtype="bfloat16"), LABELS).model
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
