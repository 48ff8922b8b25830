"""OpenAI's model code and transformers compute the same logits from converted weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from roundtrip import hf_config, mapping, references, verify
from roundtrip.examples import DEMO, random_openai_model
from roundtrip.testing import architectures, openai_dtypes, seeds

from conftest import import_clip

TOLERANCE = 1e-3
END_OF_TEXT = 49407


def hf_model_from(openai_model, architecture, **text_config_overrides):
    """transformers' CLIPModel holding to_hf() of the model's weights, in float32."""
    from transformers import CLIPConfig, CLIPModel

    config = hf_config.config(architecture)
    config["text_config"].update(text_config_overrides)
    hf_weights = {k: v.float() for k, v in mapping.to_hf(openai_model.state_dict()).items()}
    return CLIPModel.from_pretrained(None, config=CLIPConfig.from_dict(config), state_dict=hf_weights,
                                     dtype=torch.float32).eval()


@torch.no_grad()
def logit_gap(openai_model, hf_model, images, tokens) -> float:
    reference, _ = openai_model.float()(images, tokens)
    converted = hf_model(input_ids=tokens, pixel_values=images).logits_per_image
    return (reference - converted).abs().max().item()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures(), openai_dtypes, seeds)
def test_logits_of_both_frameworks_agree(architecture, halved, seed):
    openai_model = random_openai_model(architecture, seed=seed, openai_dtypes=halved)
    hf_model = hf_model_from(openai_model, architecture)
    images, tokens = verify.probe_images(architecture), verify.probe_tokens(architecture)
    assert logit_gap(openai_model, hf_model, images, tokens) <= TOLERANCE


@pytest.fixture(scope="module")
def pooling_models():
    openai_model = random_openai_model(DEMO, seed=3).float()
    return openai_model, {
        "legacy eos 2 (written by to-hf)": hf_model_from(openai_model, DEMO),
        "eos 49407 (transformers default)": hf_model_from(openai_model, DEMO, eos_token_id=END_OF_TEXT),
    }


def tokenized(padding: int, texts=("a photo of a cat", "a dog", "x")) -> torch.Tensor:
    tokens = import_clip().tokenize(list(texts), truncate=True)
    after_end = torch.cumsum(tokens == END_OF_TEXT, dim=1) - (tokens == END_OF_TEXT).long() > 0
    return tokens.masked_fill(after_end, padding)


LONG_TEXT = "a very long caption " * 40

TOKEN_CASES = {
    "padded with 0 (clip.tokenize)": lambda: tokenized(0),
    "padded with 49407 (HF tokenizer)": lambda: tokenized(END_OF_TEXT),
    "truncated to 77 tokens": lambda: import_clip().tokenize([LONG_TEXT, "short"], truncate=True),
}


@pytest.mark.parametrize("case", TOKEN_CASES)
@pytest.mark.parametrize("config", ["legacy eos 2 (written by to-hf)", "eos 49407 (transformers default)"])
def test_text_pooling_matches_openai_for_tokenized_input(pooling_models, case, config):
    openai_model, hf_models = pooling_models
    tokens = TOKEN_CASES[case]()
    if case.startswith("truncated"):
        assert tokens[0, -1] == END_OF_TEXT and (tokens[0] > 0).all()
    images = verify.probe_images(DEMO)
    assert logit_gap(openai_model, hf_models[config], images, tokens) <= TOLERANCE


def test_padding_variants_really_differ():
    # Guards the cases above: the two paddings must not be the same tensor.
    assert not torch.equal(tokenized(0), tokenized(END_OF_TEXT))


def test_legacy_eos_pools_like_openai_even_without_an_end_token(pooling_models):
    # The old conversion script's check: arange(0, 77) has no 49407. Only argmax pooling
    # (eos_token_id 2) reproduces OpenAI here; "first 49407" pooling falls back to position 0.
    openai_model, hf_models = pooling_models
    tokens = torch.arange(0, 77).unsqueeze(0)
    images = verify.probe_images(DEMO)[:1]
    assert logit_gap(openai_model, hf_models["legacy eos 2 (written by to-hf)"], images, tokens) <= TOLERANCE
    assert logit_gap(openai_model, hf_models["eos 49407 (transformers default)"], images, tokens) > TOLERANCE


def openai_against_hf(state_dict, architecture, config=None) -> float:
    """The logit check of a conversion between OpenAI's format and transformers'."""
    hf_side = verify.Side(references.HF, config or hf_config.config(architecture))
    return verify.check(state_dict, "openai", verify.Side(references.OPENAI), hf_side, architecture).logits


def test_verification_catches_a_wrong_mapping(demo_state_dict, monkeypatch):
    # Swap q and k in every layer: the round trip would still be exact, the logits must not be.
    right_gap = openai_against_hf(demo_state_dict, DEMO)
    correct_to_hf = mapping.to_hf

    def to_hf_with_q_and_k_swapped(state_dict, *towers):
        hf_weights = correct_to_hf(state_dict, *towers)
        swapped = dict(hf_weights)
        for key in hf_weights:
            if ".q_proj." in key:
                k_key = key.replace(".q_proj.", ".k_proj.")
                swapped[key], swapped[k_key] = hf_weights[k_key], hf_weights[key]
        return swapped

    monkeypatch.setattr(mapping, "to_hf", to_hf_with_q_and_k_swapped)
    wrong_gap = openai_against_hf(demo_state_dict, DEMO)
    assert right_gap <= TOLERANCE < wrong_gap


@pytest.mark.parametrize("tower", ["text_config", "vision_config"])
@pytest.mark.parametrize("field, wrong", [("hidden_act", "gelu"), ("num_attention_heads", 4)])
def test_verification_catches_a_wrong_activation_or_head_count(demo_state_dict, tower, field, wrong):
    config = hf_config.config(DEMO)
    config[tower][field] = wrong  # what a hand-edited config of a hub port gets wrong
    assert openai_against_hf(demo_state_dict, DEMO) <= TOLERANCE < openai_against_hf(demo_state_dict, DEMO, config)


@pytest.mark.parametrize("context_length", [77, 16, 5, 2])
def test_probe_tokens_are_clip_tokenize(context_length):
    architecture = dataclasses.replace(DEMO, vocab_size=verify.OPENAI_VOCAB_SIZE, context_length=context_length)
    expected = import_clip().tokenize(list(verify.PROBE_TEXTS), context_length=context_length, truncate=True)
    assert torch.equal(verify.probe_tokens(architecture), expected)


def test_the_probe_images_are_random_pixels_normalised_as_clips_transform_does():
    """The check feeds the models images clip's own preprocessing could make: pixels spread over [0, 1], normalised
    with the mean and std of clip's transform, in colour. Kills `probe_images` normalising otherwise
    (another operation, or none) or making grey images (one random plane in every channel)."""
    from torchvision.transforms import Normalize

    normalise = next(step for step in import_clip().clip._transform(DEMO.image_resolution).transforms
                     if isinstance(step, Normalize))
    images = verify.probe_images(DEMO)
    pixels = images * torch.tensor(normalise.std).view(1, 3, 1, 1) + torch.tensor(normalise.mean).view(1, 3, 1, 1)
    assert images.shape == (verify.PROBE_IMAGES, 3, DEMO.image_resolution, DEMO.image_resolution)
    assert 0 <= pixels.min() < 0.01 and 0.99 < pixels.max() <= 1
    # Colour, not grey: a conversion that swapped the first layer's colour channels must not go unseen.
    assert all((pixels[:, a] - pixels[:, b]).abs().max() > 0.5 for a, b in ((0, 1), (1, 2), (0, 2)))


@pytest.mark.parametrize("vocab_size", [1000, verify.OPENAI_VOCAB_SIZE + 100])
def test_the_probe_texts_of_another_vocabulary_are_spread_over_its_ids(vocab_size):
    """The check of a model with a vocabulary of another size reads many rows of its token embedding: each text is
    start, random ids that are neither padding nor start/end, end. Kills `probe_tokens` drawing every id of a
    text as one value."""
    start, end = vocab_size - 2, vocab_size - 1
    rows = verify.probe_tokens(dataclasses.replace(DEMO, vocab_size=vocab_size)).tolist()
    bodies = [row[1:row.index(end)] for row in rows]
    ids = [token for body in bodies for token in body]
    assert [row[0] for row in rows] == [start] * len(rows)
    assert all(0 < token < start for token in ids)
    assert len(set(ids)) > len(ids) // 2
