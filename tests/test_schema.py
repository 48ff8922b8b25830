"""Invariants of the one schema: coverage, exact inverses, anchored patterns."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from roundtrip import mapping
from roundtrip.mapping import (
    TO_HF,
    TO_OPENAI,
    Conversion,
    IncompleteCheckpoint,
    MappingError,
    OtherLayout,
    Pattern,
    UnsupportedArchitecture,
)
from roundtrip.ops import Chunk, Concatenate, Identity, OperationError, Transpose
from roundtrip.schema import PLACEHOLDERS, RULES

from conftest import assert_identical, hf_clip_config, random_hf_model, resnet_clip_state_dict

SAMPLE_FIELDS = {"i": "7", "wb": "bias"}


@pytest.fixture(scope="module")
def hf_state_dict():
    return random_hf_model(hf_clip_config(), fp16_representable=False).state_dict()


def test_to_hf_produces_exactly_the_keys_transformers_expects(demo_state_dict, hf_state_dict):
    assert sorted(mapping.to_hf(demo_state_dict)) == sorted(hf_state_dict)


def test_to_openai_produces_exactly_the_keys_openai_expects(demo_state_dict, hf_state_dict):
    assert sorted(mapping.to_openai(hf_state_dict)) == sorted(demo_state_dict)


@pytest.mark.parametrize("conversions", [TO_HF, TO_OPENAI], ids=["to_hf", "to_openai"])
def test_every_real_key_matches_exactly_one_rule(conversions, demo_state_dict, hf_state_dict):
    keys = demo_state_dict if conversions is TO_HF else hf_state_dict
    steps = mapping.plan(keys, conversions)
    consumed = [key for step in steps for key in step.sources]
    assert sorted(consumed) == sorted(keys)
    produced = [key for step in steps for key in step.targets]
    assert len(produced) == len(set(produced))


MAPPED_RULES = [rule for rule in RULES if rule.hf]


@pytest.mark.parametrize("rule", MAPPED_RULES, ids=lambda rule: rule.openai[0])
def test_inverse_of_inverse_is_itself(rule):
    assert rule.op.inverse.inverse == rule.op


def test_only_a_resnet_has_keys_with_no_hf_side():
    """A rule without an HF side has no operation either: its keys are read and checked, never mapped."""
    unmapped = [rule for rule in RULES if not rule.hf]
    assert unmapped and all(rule.op is None and rule.kind == "resnet" for rule in unmapped)
    assert all(rule.op is not None for rule in MAPPED_RULES)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.openai[0])
def test_rule_arity_and_fields_agree_on_both_sides(rule):
    assert len(rule.openai) == (rule.op.arity_in if rule.op else 1)
    assert len(rule.hf) == (rule.op.arity_out if rule.op else 0)
    fields = {Pattern(t).fields for t in rule.openai + rule.hf}
    assert len(fields) == 1, "every pattern of a rule must use the same placeholders"
    assert fields.pop() <= PLACEHOLDERS.keys()


@pytest.mark.parametrize("direction", [TO_HF, TO_OPENAI], ids=["to_hf", "to_openai"])
def test_each_pattern_parses_what_it_formats_and_nothing_else_does(direction):
    for conversion in direction:
        for pattern in conversion.sources:
            key = pattern.format(SAMPLE_FIELDS)
            assert pattern.parse(key) == {k: SAMPLE_FIELDS[k] for k in pattern.fields}
            matching = [p for c in direction for p in c.sources if p.parse(key) is not None]
            assert matching == [pattern], f"{key} is matched by {[p.template for p in matching]}"


def test_patterns_are_anchored():
    pattern = Pattern("ln_final.{wb}")
    assert pattern.parse("ln_final.weight") == {"wb": "weight"}
    for near_miss in ("x.ln_final.weight", "ln_final.weight.x", "ln_finalXweight", "ln_final.scale"):
        assert pattern.parse(near_miss) is None


tensors_2d = st.tuples(st.integers(1, 6), st.integers(1, 6)).map(
    lambda shape: torch.randn(3 * shape[0], shape[1]).to(torch.float16)
)


@given(tensors_2d)
def test_every_operation_followed_by_its_inverse_is_bit_exact(tensor):
    for op in (Identity(), Transpose(), Chunk(3, 0)):
        outputs = op([tensor])
        (back,) = op.inverse(outputs)
        assert back.dtype == tensor.dtype and torch.equal(back, tensor)


def test_chunk_refuses_a_size_not_divisible_by_its_parts():
    with pytest.raises(OperationError, match="3 equal parts"):
        Chunk(3, 0)([torch.zeros(4, 2)])


@pytest.mark.parametrize("odd", [0, 2], ids=["first", "last"])
def test_concatenate_refuses_pieces_that_chunk_would_not_give_back(odd):
    pieces = [torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2)]
    pieces[odd] = pieces[odd].half()
    shapes = ", ".join(f"(2, 2) {piece.dtype}" for piece in pieces)
    with pytest.raises(OperationError, match=re.escape(f"cannot fuse tensors of different shapes or dtypes: {shapes}")):
        Concatenate(3, 0)(pieces)


def test_transpose_refuses_a_tensor_that_is_not_a_matrix():
    with pytest.raises(OperationError, match=re.escape("expected a matrix to transpose, got shape (2, 2, 2)")):
        Transpose()([torch.zeros(2, 2, 2)])


def test_chunk_refuses_an_axis_the_tensor_does_not_have():
    with pytest.raises(OperationError, match=re.escape("cannot split shape (6,) into 3 equal parts along dim 1")):
        Chunk(3, 1)([torch.zeros(6)])


def test_chunk_and_concatenate_work_along_the_axis_they_name():
    matrix = torch.arange(8.0).reshape(2, 4)
    halves = Chunk(2, 1)([matrix])
    assert [tuple(half.shape) for half in halves] == [(2, 2), (2, 2)]
    assert torch.equal(Concatenate(2, 1)(halves)[0], matrix)


def test_unknown_key_is_named(demo_state_dict):
    with pytest.raises(MappingError, match="match no rule: visual.extra_head.weight"):
        mapping.to_hf({**demo_state_dict, "visual.extra_head.weight": torch.zeros(1)})


def test_missing_member_of_a_group_is_named(hf_state_dict):
    broken = dict(hf_state_dict)
    del broken["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(MappingError, match=r"missing key\(s\).*layers\.1\.self_attn\.k_proj\.weight"):
        mapping.to_openai(broken)


def test_a_target_produced_twice_is_an_error():
    twice = (
        Conversion((Pattern("a.{wb}"),), (Pattern("out.{wb}"),), Identity(), None),
        Conversion((Pattern("b.{wb}"),), (Pattern("out.{wb}"),), Identity(), None),
    )
    with pytest.raises(MappingError, match="produced more than once: out.weight"):
        mapping.plan(["a.weight", "b.weight"], twice)


def test_a_key_matching_two_rules_is_an_error():
    overlapping = (
        Conversion((Pattern("a.{wb}"),), (Pattern("x.{wb}"),), Identity(), None),
        Conversion((Pattern("a.weight"),), (Pattern("y"),), Identity(), None),
    )
    with pytest.raises(MappingError, match="more than one rule: a.weight"):
        mapping.plan(["a.weight"], overlapping)


def test_resnet_checkpoints_are_refused_by_hf_naming_clipmodel_s_missing_resnet_tower():
    with pytest.raises(UnsupportedArchitecture, match=r"ResNet CLIP \(RN50 family\): transformers' CLIPModel has no "
                                                      r"ResNet vision tower"):
        mapping.to_hf(resnet_clip_state_dict())


def test_check_keys_counts_a_resnet_s_blocks_per_stage():
    assert mapping.check_keys(resnet_clip_state_dict(), "openai") == {"text": 1, "vision": (1, 1, 1, 1)}


@pytest.mark.parametrize("missing", ["visual.layer4.0.downsample.1.running_var", "visual.bn2.num_batches_tracked",
                                     "visual.attnpool.c_proj.bias", "visual.layer3.0.conv3.weight"])
def test_a_resnet_without_one_of_its_tensors_is_incomplete(missing):
    keys = [key for key in resnet_clip_state_dict() if key != missing]
    with pytest.raises(IncompleteCheckpoint, match=re.escape(f"missing 1 tensor(s) that a CLIP of this architecture "
                                                             f"needs: {missing}")):
        mapping.check_keys(keys, "openai")


def test_a_resnet_stage_without_blocks_is_incomplete():
    keys = [key for key in resnet_clip_state_dict() if not key.startswith("visual.layer2.")]
    with pytest.raises(IncompleteCheckpoint, match=r"missing 24 tensor\(s\).*visual\.layer2\.0\."):
        mapping.check_keys(keys, "openai")


@pytest.mark.parametrize("stray", ["visual.layer1.1.downsample.0.weight", "visual.layer5.0.conv1.weight",
                                   "visual.conv4.weight", "visual.attnpool.o_proj.weight"])
def test_a_resnet_key_no_resnet_has_matches_no_rule(stray):
    with pytest.raises(MappingError, match=f"1 key\\(s\\) match no rule: {re.escape(stray)}"):
        mapping.check_keys([*resnet_clip_state_dict(), stray], "openai")


def test_a_vision_tower_of_both_kinds_is_refused(demo_state_dict):
    with pytest.raises(MappingError, match=r"keys of a ResNet and of a vision transformer \(such as "
                                           r"visual\.class_embedding"):
        mapping.check_keys([*demo_state_dict, *resnet_clip_state_dict()], "openai")


@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_check_keys_counts_the_blocks_of_each_tower(layout, demo_state_dict, hf_state_dict):
    keys = demo_state_dict if layout == "openai" else hf_state_dict
    assert mapping.check_keys(keys, layout) == {"text": 2, "vision": 2}


def test_a_gap_in_the_blocks_names_the_missing_block(demo_state_dict):
    gap = {key for key in demo_state_dict if not key.startswith("transformer.resblocks.0.")}
    with pytest.raises(IncompleteCheckpoint, match=r"missing 12 tensor\(s\).*transformer\.resblocks\.0\.attn"):
        mapping.check_keys(gap, "openai")


def test_a_far_block_index_is_counted_without_listing_every_block(demo_state_dict):
    far = {**demo_state_dict, "transformer.resblocks.1000000000.ln_1.weight": torch.zeros(1)}
    # Blocks 0, 1 and 10**9 are there: 10**9 - 2 whole blocks of 12 keys are missing, and 11 of the far one.
    with pytest.raises(IncompleteCheckpoint, match=f"missing {(10**9 - 2) * 12 + 11} tensor"):
        mapping.check_keys(far, "openai")


def test_keys_of_the_other_layout_are_called_what_they_are(demo_state_dict, hf_state_dict):
    with pytest.raises(OtherLayout, match="not an OpenAI CLIP checkpoint.*Hugging Face CLIPModel") as raised:
        mapping.check_keys(hf_state_dict, "openai")
    assert raised.value.found == "hf"
    with pytest.raises(OtherLayout, match="not a Hugging Face CLIPModel checkpoint.*OpenAI CLIP") as raised:
        mapping.check_keys(demo_state_dict, "hf")
    assert raised.value.found == "openai"
    with pytest.raises(OtherLayout, match=r"not a CLIP checkpoint: none of its keys.*\(a, b\)") as raised:
        mapping.check_keys(["a", "b"], "openai")
    assert raised.value.found is None


# A key of each variant, as open_clip 3.3 names it.
VARIANT_KEYS = {
    "visual.trunk.blocks.0.attn.qkv.weight": "timm vision tower",
    "text.transformer.embeddings.word_embeddings.weight": "custom text tower",
    "visual.transformer.resblocks.0.ls_1.gamma": "layer scale", "transformer.resblocks.3.ls_2.gamma": "layer scale",
    "visual.attn_pool.attn.in_proj_weight": "attentional pooler", "text_decoder.resblocks.0.ln_1.weight": "CoCa",
    "text_projection.bias": "proj_bias", "logit_bias": "logit bias",
}


@pytest.mark.parametrize("key", VARIANT_KEYS)
def test_variants_clipmodel_cannot_hold_are_named_by_what_they_are(demo_state_dict, key):
    with pytest.raises(UnsupportedArchitecture, match=VARIANT_KEYS[key]):
        mapping.check_keys([*demo_state_dict, key], "openai")


def test_one_tower_under_a_key_prefix_is_checked_and_mapped_on_its_own(demo_state_dict):
    # What a format of Stable Diffusion's text encoders will declare: the text tower alone, embedded in a larger
    # checkpoint under a prefix (SD 2.x's cond_stage_model.model. in OpenAI's layout).
    prefix = "cond_stage_model.model."
    text_only = {key: tensor for key, tensor in demo_state_dict.items()
                 if not key.startswith("visual.") and key != "logit_scale"}
    checkpoint = {**mapping.with_prefix(text_only, prefix), "model.diffusion_model.out.0.weight": torch.zeros(1)}
    embedded = mapping.without_prefix(checkpoint, prefix)
    assert mapping.check_keys(embedded, "openai", towers=("text",)) == {"text": 2}
    hf = mapping.convert(embedded, "openai", "hf", towers=("text",))
    assert all(key.startswith(("text_model.", "text_projection")) for key in hf)
    assert_identical(mapping.convert(hf, "hf", "openai", towers=("text",)), text_only)
    with pytest.raises(IncompleteCheckpoint, match="visual.conv1.weight"):
        mapping.check_keys(embedded, "openai")  # a model with both towers needs the vision tower too


def test_key_lists_name_a_few_then_count_the_rest():
    assert mapping.describe_keys(["c", "a", "b"], limit=2) == "a, b (and 1 more)"
    assert mapping.describe_keys(["a", "b"], limit=2, total=10**6) == "a, b (and 999998 more)"
    assert mapping.describe_keys(["b", "a"]) == "a, b"


def test_the_modules_the_check_reads_are_those_whose_weights_the_rules_name():
    """A module path in TOWER_MODULES that no weight key starts with would make the check read nothing there."""
    from roundtrip.schema import RESNET_MODULES, TOWER_MODULES

    resnet_keys = [key for rule in RULES if rule.kind == "resnet" for key in rule.openai]
    assert all(key.startswith("visual.") for key in resnet_keys)
    assert any(key.startswith(RESNET_MODULES.block + ".") for key in resnet_keys)
    for layout, towers in TOWER_MODULES.items():
        keys = [key for rule in RULES for key in getattr(rule, layout)]
        for tower, modules in towers.items():
            tower_keys = [key for rule in RULES if rule.tower == tower for key in getattr(rule, layout)]
            assert any(key.startswith(modules.block + ".") for key in tower_keys), (layout, tower)
            assert f"{modules.final_norm}.{{wb}}" in tower_keys, (layout, tower)
            if modules.projection is not None:
                assert f"{modules.projection}.weight" in keys, (layout, tower)
