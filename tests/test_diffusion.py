"""Diffusion models' CLIP text encoders: single files (Stable Diffusion 1.x, 2.x, XL, XL refiner, 3) and standalone
encoder files to diffusers components, with diffusers' own single-file code as the referee."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from roundtrip.errors import VerificationError
from roundtrip.pipeline import convert_to_diffusers, convert_to_single_file
from roundtrip.safetensors_file import metadata, stored_order
from roundtrip.testing import single_file_tensors, single_files, write_single_file

from conftest import assert_refused, run_cli

# case -> (family, fixture options, the components to-diffusers writes)
CASES = {
    "SD 1.x": ("Stable Diffusion 1.x", {"position_ids": True}, ("text_encoder",)),
    "SD 1.x, older keys": ("Stable Diffusion 1.x", {"older_keys": True}, ("text_encoder",)),
    # 24 blocks, as diffusers leaves out block 23 by its number; narrower than the real 1024, for speed
    "SD 2.x": ("Stable Diffusion 2.x", {"layers": 24, "width": 128}, ("text_encoder",)),
    "SDXL": ("Stable Diffusion XL", {}, ("text_encoder", "text_encoder_2")),
    "SDXL refiner": ("Stable Diffusion XL refiner", {}, ("text_encoder_2",)),
    "SD3": ("Stable Diffusion 3", {}, ("text_encoder", "text_encoder_2")),
    "standalone clip_l": ("standalone clip_l", {}, ("text_encoder",)),
    "standalone clip_g": ("standalone clip_g", {}, ("text_encoder_2",)),
}


def _diffusers_component(checkpoint: dict, folder: Path, component: str) -> dict[str, torch.Tensor]:
    """What diffusers' own single-file code builds for `component` from `checkpoint` (with the config written
    in `folder`, as from_single_file takes a pipeline's config), as a state dict."""
    import transformers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    config = json.loads((folder / component / "config.json").read_text())
    model_class = getattr(transformers, config["architectures"][0])
    model = create_diffusers_clip_model_from_ldm(model_class, checkpoint, subfolder=component, config=str(folder),
                                                 local_files_only=True)
    return model.state_dict()


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def _unprefixed(tensors: dict) -> dict:
    return {key.removeprefix("text_model."): tensor for key, tensor in tensors.items()
            if not key.endswith("position_ids")}


@pytest.mark.parametrize("case", CASES)
def test_to_diffusers_writes_what_diffusers_own_single_file_code_builds(tmp_path, case):
    family, options, components = CASES[case]
    source = write_single_file(tmp_path / "model.safetensors", family, **options)
    summaries = convert_to_diffusers(source, tmp_path / "out")
    assert [summary.dest.name for summary in summaries] == list(components)
    card = (tmp_path / "out" / "README.md").read_text()
    assert all(note in card for summary in summaries for note in summary.notes)  # what was left out or added
    # diffusers reads no Stable Diffusion 1.x file of the older keys: its referee reads the same tensors named
    # as in newer files
    checkpoint = load_file(source) if "older_keys" not in options else single_file_tensors(
        family, **{name: value for name, value in options.items() if name != "older_keys"})
    for component in components:
        written = _unprefixed(load_file(tmp_path / "out" / component / "model.safetensors"))
        # diffusers has no route for a standalone file, which is already in transformers' key layout: its
        # tensors are the component's
        expected = _unprefixed(checkpoint if family.startswith("standalone") else
                               _diffusers_component(checkpoint, tmp_path / "out", component))
        assert written.keys() == expected.keys()
        for key, tensor in written.items():
            # diffusers loads into a float32 model: the written tensor, widened, must be its every value
            assert torch.equal(tensor.float(), expected[key].float()), key
        import transformers

        model_class = getattr(transformers, json.loads((tmp_path / "out" / component / "config.json").read_text())
                              ["architectures"][0])
        _, info = model_class.from_pretrained(tmp_path / "out" / component, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info


ROUND_TRIPS = {name: CASES[name][:2] for name in CASES if not name.startswith("standalone")}


@pytest.mark.parametrize("ckpt", [False, True], ids=["safetensors", "ckpt"])
@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_a_single_file_comes_back_bit_exact_through_diffusers_components(tmp_path, case, ckpt):
    """BASE -> to-diffusers -> to-single-file --base BASE: every tensor of BASE, bit for bit, in its dtype (and,
    from a safetensors BASE, in its order with its metadata)."""
    family, options = ROUND_TRIPS[case]
    base = write_single_file(tmp_path / ("base.ckpt" if ckpt else "base.safetensors"), family, ckpt=ckpt, **options)
    convert_to_diffusers(base, tmp_path / "components")
    summary = convert_to_single_file(tmp_path / "components", tmp_path / "back.safetensors", base)
    assert summary.agreement is not None
    original = (torch.load(base, weights_only=True)["state_dict"] if ckpt else load_file(base))
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and torch.equal(_bits(back[key]), _bits(tensor)), key
    if not ckpt:
        assert stored_order(tmp_path / "back.safetensors") == stored_order(base)
        assert metadata(tmp_path / "back.safetensors").items() >= metadata(base).items()


# ---- what verification must catch ------------------------------------------------------------------------------


def _plant_untransposed_projection(monkeypatch) -> None:
    """The bug of kohya's sdxl_model_util (and of diffusers before #6933): OpenAI-layout text_projection
    copied into HF's text_projection.weight as it is. Square for ViT-bigG, so it loads without an error."""
    import dataclasses

    from roundtrip import mapping
    from roundtrip.ops import Identity

    planted = tuple(dataclasses.replace(c, op=Identity()) if c.projection and c.tower == "text" else c
                    for c in mapping.TO_HF)
    monkeypatch.setattr(mapping, "TO_HF", planted)
    monkeypatch.setitem(mapping.READING, "openai", planted)


def test_an_untransposed_sdxl_projection_fails_verification(tmp_path, monkeypatch):
    source = write_single_file(tmp_path / "sdxl.safetensors", "Stable Diffusion XL")
    _plant_untransposed_projection(monkeypatch)
    with pytest.raises(VerificationError, match="text.projected differs"):
        convert_to_diffusers(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_duplicated_block_fails_verification(tmp_path, monkeypatch):
    """Block 0's weights written as block 1's too, on the way to HF's layout."""
    from roundtrip import mapping

    convert = mapping.convert

    def duplicating(state_dict, source, target, towers=("text", "vision")):
        converted = convert(state_dict, source, target, towers)
        if target != "hf":
            return converted
        return {key: converted.get(key.replace("layers.1.", "layers.0."), tensor) for key, tensor in
                converted.items()}

    source = write_single_file(tmp_path / "sdxl.safetensors", "Stable Diffusion XL")
    monkeypatch.setattr(mapping, "convert", duplicating)
    with pytest.raises(VerificationError, match="text.layers.1 differs"):
        convert_to_diffusers(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["clip_l", "clip_g"])
def test_a_standalone_encoder_file_comes_back_bit_exact_through_its_diffusers_component(tmp_path, name):
    """As ComfyUI's CLIPSave writes one: with logit_scale and position_ids, which no component holds (they are
    recorded, and put back)."""
    source = write_single_file(tmp_path / f"{name}.safetensors", f"standalone {name}", dtype="bfloat16",
                               logit_scale=True, position_ids=True)
    (summary,) = convert_to_diffusers(source, tmp_path / "components")
    convert_to_single_file(tmp_path / "components", tmp_path / "back.safetensors")
    original, back = load_file(source), load_file(tmp_path / "back.safetensors")
    assert list(back) == list(original)
    assert all(back[key].dtype == tensor.dtype and torch.equal(_bits(back[key]), _bits(tensor))
               for key, tensor in original.items())
    assert stored_order(tmp_path / "back.safetensors") == stored_order(source)


@settings(max_examples=int(os.environ.get("CLIPCONV_DIFFUSION_EXAMPLES", 6)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=single_files(), dtype=st.sampled_from(["keep", "float32"]))
def test_any_single_file_comes_back_bit_exact_through_diffusers_components(tmp_path_factory, case, dtype):
    """Any family, dtype, depth and key style, from safetensors or .ckpt, widened to float32 in between or not:
    to-diffusers then to-single-file (with the file as --base; a standalone file without) gives back every tensor
    of the file, bit for bit and in its dtype, each step verified."""
    folder = tmp_path_factory.mktemp("case")
    source = case.write(folder)
    convert_to_diffusers(source, folder / "components", dtype=dtype)
    standalone = case.family.startswith("standalone")
    convert_to_single_file(folder / "components", folder / "back.safetensors", base=None if standalone else source)
    original = torch.load(source, weights_only=True)["state_dict"] if case.ckpt else load_file(source)
    back = load_file(folder / "back.safetensors")
    assert back.keys() == original.keys()
    assert all(back[key].dtype == tensor.dtype and torch.equal(_bits(back[key]), _bits(tensor))
               for key, tensor in original.items())


@pytest.mark.parametrize("command, dest", [("to-hf", "out"), ("to-openai", "out.pt"), ("to-open-clip", "out")])
@pytest.mark.parametrize("encoder", ["clip_l", "clip_g"])
def test_any_command_takes_one_encoder_out_of_a_single_file(tmp_path, command, dest, encoder):
    """--encoder: that encoder as a tower alone in the command's format, the same model as in the file (OpenAI's
    code has no GELU: ViT-bigG's encoder is refused by to-openai, saying why)."""
    from roundtrip.testing import assert_equivalent

    source = write_single_file(tmp_path / "sdxl.safetensors", "Stable Diffusion XL", layers=1, vocab_size=1000)
    result = run_cli(command, source, tmp_path / dest, "--encoder", encoder)
    if (command, encoder) == ("to-openai", "clip_g"):
        assert_refused(result, "OpenAI's CLIP code cannot represent this model: text activation is gelu")
        return
    assert result.exit_code == 0, result.output
    assert f"read {encoder} of a Stable Diffusion XL checkpoint" in result.output
    assert_equivalent(source, tmp_path / dest, encoder_a=encoder)


def test_a_component_saved_again_by_transformers_goes_back_bit_exact(tmp_path):
    """transformers >= 5.6 saves CLIPTextModel without text_model. (transformers#46285, diffusers#13843: single-file
    export broke on it): a component fine-tuned and saved by transformers still goes back into the base."""
    import transformers

    base = write_single_file(tmp_path / "sd15.safetensors", "Stable Diffusion 1.x", position_ids=True)
    convert_to_diffusers(base, tmp_path / "components")
    component = tmp_path / "components" / "text_encoder"
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(component)).half()
    model.load_state_dict({key.removeprefix("text_model."): tensor
                           for key, tensor in load_file(component / "model.safetensors").items()})
    model.save_pretrained(component)  # built, not loaded: saved as transformers >= 5.6 saves it
    assert not any(key.startswith("text_model.") for key in load_file(component / "model.safetensors"))
    convert_to_single_file(tmp_path / "components", tmp_path / "back.safetensors", base)
    original, back = load_file(base), load_file(tmp_path / "back.safetensors")
    assert back.keys() == original.keys()
    assert all(torch.equal(_bits(back[key]), _bits(tensor)) for key, tensor in original.items())


def test_position_ids_stored_as_floats_are_read_as_the_positions(tmp_path):
    """Merged checkpoints hold position_ids as floats (AUTOMATIC1111#6728): set aside as positions, the file's own
    tensor kept by the way back."""
    tensors = single_file_tensors("Stable Diffusion 1.x", position_ids=True)
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    tensors[key] = tensors[key].float()
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "merged.safetensors")
    (summary,) = convert_to_diffusers(tmp_path / "merged.safetensors", tmp_path / "components")
    assert any(f"{key} set aside" in note for note in summary.notes)
    convert_to_single_file(tmp_path / "components", tmp_path / "back.safetensors", tmp_path / "merged.safetensors")
    back = load_file(tmp_path / "back.safetensors")
    assert back[key].dtype == torch.float32 and torch.equal(back[key], tensors[key])
