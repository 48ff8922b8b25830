"""The preprocessor_config.json to-hf writes makes transformers preprocess images like `clip`'s own transform.

The reference is `clip.clip._transform(n_px)`: Resize(n_px, BICUBIC), CenterCrop(n_px),
RGB, ToTensor, Normalize with OpenAI's mean and std. Both of transformers' image
processor backends are checked: torchvision (what AutoImageProcessor, CLIPProcessor
and the pipeline load by default) and PIL.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from roundtrip.examples import DEMO

from conftest import convert_random_checkpoint, image, import_clip

TOLERANCE = 1e-3  # mean |Δ| of normalized pixel values
RESOLUTIONS = (224, 336)
BACKENDS = ("torchvision", "pil")


def images_for(n: int) -> dict[str, tuple[int, int, str, str]]:
    """name -> (width, height, kind, mode): many sizes and aspect ratios around resolution n."""
    return {
        "square-at-resolution": (n, n, "smooth", "RGB"),
        "square-at-resolution-noise": (n, n, "noise", "RGB"),
        "landscape-640x480": (640, 480, "smooth", "RGB"),
        "landscape-640x480-noise": (640, 480, "noise", "RGB"),
        "portrait-480x640": (480, 640, "smooth", "RGB"),
        "tiny-1x1": (1, 1, "noise", "RGB"),
        "tiny-17x9": (17, 9, "smooth", "RGB"),
        "thin-3x500": (3, 500, "smooth", "RGB"),
        "odd-1001x333": (1001, 333, "smooth", "RGB"),
        "odd-800x801": (800, 801, "noise", "RGB"),
        "one-wider": (n + 1, n, "smooth", "RGB"),
        "three-wider": (n + 3, n, "smooth", "RGB"),
        "seven-taller": (n, n + 7, "smooth", "RGB"),
        "grayscale-500x375": (500, 375, "smooth", "L"),
        "cmyk-500x375": (500, 375, "smooth", "CMYK"),
        "palette-333x500": (333, 500, "smooth", "P"),
        "bilevel-500x375": (500, 375, "smooth", "1"),
        "translucent-rgba-500x375": (500, 375, "smooth", "RGBA"),
    }


# Inputs whose preprocessing transformers does differently from clip, whatever preprocessor_config.json says.
RESIZED_BEFORE_RGB = ("clip's transform resizes before converting to RGB, and PIL resizes palette and 1-bit "
                      "images with nearest neighbour; transformers converts to RGB first, then resizes bicubically")
MODE_DIVERGENCES = {
    "P": RESIZED_BEFORE_RGB,
    "1": RESIZED_BEFORE_RGB,
    "RGBA": "clip's transform drops the alpha channel; transformers composites the image onto white",
}
CROP_REASON = ("transformers center-crops at int(excess / 2), torchvision's CenterCrop (clip's transform) at "
               "round(excess / 2) with half to even: a one-pixel shift when the excess is 3 mod 4")


def transformers_crop_is_one_pixel_off(width: int, height: int, n: int) -> bool:
    """Whether transformers' center crop starts one pixel before torchvision's.

    After resizing the short side to n (the long side to int(n * long / short) in
    both libraries), torchvision's CenterCrop starts at round(excess / 2), and Python
    rounds halves to even; transformers starts at int(excess / 2). They differ when
    the excess is 3 modulo 4.
    """
    short, long = sorted((width, height))
    excess = int(n * long / short) - n
    return round(excess / 2) != int(excess / 2)


CASES = [(n, backend, name) for n in RESOLUTIONS for backend in BACKENDS for name in images_for(n)]


def known_divergence(n: int, name: str) -> str | None:
    width, height, _, mode = images_for(n)[name]
    if mode in MODE_DIVERGENCES:
        return MODE_DIVERGENCES[mode]
    return CROP_REASON if transformers_crop_is_one_pixel_off(width, height, n) else None


def with_known_divergences(cases):
    """Strict xfail where transformers cannot match: the test fails if transformers starts to agree."""
    return [
        pytest.param(*case, marks=pytest.mark.xfail(strict=True, reason=known_divergence(case[0], case[2])))
        if known_divergence(case[0], case[2]) else case
        for case in cases
    ]


CROP_OFF_CASES = [case for case in CASES if known_divergence(case[0], case[2]) == CROP_REASON]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[int, object]:
    """to-hf output for a small checkpoint at each resolution (the processor files do not depend on depth)."""
    converted = {}
    for n in RESOLUTIONS:
        architecture = dataclasses.replace(DEMO, image_resolution=n, patch_size=16)
        _, converted[n] = convert_random_checkpoint(tmp_path_factory.mktemp(f"{n}px"), architecture, "--no-verify")
    return converted


@pytest.fixture(scope="module")
def processors(folders) -> dict[tuple[int, str], object]:
    from transformers import AutoImageProcessor

    return {(n, backend): AutoImageProcessor.from_pretrained(folders[n], backend=backend)
            for n in RESOLUTIONS for backend in BACKENDS}


@pytest.fixture(scope="module")
def pixel_values(processors):
    """(transformers, clip) pixel values of a case, computed once for every test that looks at it."""

    @functools.cache
    def of_case(n: int, backend: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        picture = image(*images_for(n)[name])
        return hf_pixels(processors[n, backend], picture), clip_pixels(picture, n)

    return of_case


def hf_pixels(processor, picture) -> torch.Tensor:
    return torch.as_tensor(np.asarray(processor(picture, return_tensors="pt")["pixel_values"][0]))


def clip_pixels(picture, n: int) -> torch.Tensor:
    return import_clip().clip._transform(n)(picture)


def test_default_loaders_pick_the_torchvision_processor_and_pil_is_available(folders, processors):
    from transformers import CLIPImageProcessor, CLIPProcessor

    assert type(CLIPProcessor.from_pretrained(folders[224]).image_processor) is CLIPImageProcessor
    assert type(processors[224, "pil"]).__name__ == "CLIPImageProcessorPil"


@pytest.mark.parametrize("n, backend, name", CASES)
def test_pixel_values_have_the_shape_of_clips_transform(pixel_values, n, backend, name):
    transformers_pixels, clip_reference = pixel_values(n, backend, name)
    assert transformers_pixels.shape == clip_reference.shape == (3, n, n)


@pytest.mark.parametrize("n, backend, name", with_known_divergences(CASES))
def test_pixel_values_match_clips_transform(pixel_values, n, backend, name):
    transformers_pixels, clip_reference = pixel_values(n, backend, name)
    assert (transformers_pixels - clip_reference).abs().mean() <= TOLERANCE


@pytest.mark.parametrize("n, backend, name", CROP_OFF_CASES)
def test_where_they_differ_it_is_only_transformers_crop_offset(processors, n, backend, name):
    """clip's own steps, with the crop moved to transformers' offset, reproduce transformers' output."""
    from torchvision.transforms import functional as F

    transform = import_clip().clip._transform(n)
    resize, _, to_rgb, to_tensor, normalize = transform.transforms
    picture = image(*images_for(n)[name])
    resized = resize(picture)
    top, left = int((resized.height - n) / 2), int((resized.width - n) / 2)
    shifted = normalize(to_tensor(to_rgb(F.crop(resized, top, left, n, n))))
    assert (hf_pixels(processors[n, backend], picture) - shifted).abs().mean() <= TOLERANCE


# ---- open_clip's resize_mode "squash": both sides to the resolution, no crop -----------------------------------

SQUASHED = {name: size for name, size in images_for(224).items() if size[3] not in MODE_DIVERGENCES}


@pytest.fixture(scope="module")
def squash_folders(tmp_path_factory):
    """An open_clip folder whose preprocess_cfg squashes images, and its to-hf output."""
    from roundtrip import open_clip_config
    from roundtrip.examples import random_open_clip_model, save_open_clip_folder

    from conftest import run_cli

    folder = tmp_path_factory.mktemp("squash")
    model_cfg = open_clip_config.registry_config("ViT-B-32")
    model_cfg["vision_cfg"]["layers"] = model_cfg["text_cfg"]["layers"] = 1
    preprocess_cfg = {"resize_mode": "squash", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg, folder / "oc", preprocess_cfg)
    result = run_cli("to-hf", folder / "oc", folder / "hf", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "cannot reproduce" not in result.stdout
    return folder / "oc", folder / "hf"


UPSCALED_THIN = ("transformers' torchvision backend resizes the tensor, open_clip resizes with PIL: stretching a "
                 "3-pixel side 75 times, they differ by more than 1e-3 on average")
SQUASH_CASES = [pytest.param(name, backend, marks=pytest.mark.xfail(strict=True, reason=UPSCALED_THIN))
                if (name, backend) == ("thin-3x500", "torchvision") else (name, backend)
                for name in SQUASHED for backend in BACKENDS]


@pytest.mark.parametrize("name, backend", SQUASH_CASES)
def test_a_squashing_open_clip_models_images_are_preprocessed_as_open_clip_does(squash_folders, name, backend):
    import open_clip
    from transformers import AutoImageProcessor

    source, converted = squash_folders
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{source}")
    processor = AutoImageProcessor.from_pretrained(converted, backend=backend)
    picture = image(*SQUASHED[name])
    assert (hf_pixels(processor, picture) - preprocess(picture)).abs().mean() <= TOLERANCE


def test_a_squashing_hf_processor_goes_to_open_clip_as_squash(squash_folders, tmp_path):
    from conftest import read_json, run_cli

    _, converted = squash_folders
    assert run_cli("to-open-clip", converted, tmp_path / "back", "--no-verify").exit_code == 0
    assert read_json(tmp_path / "back" / "open_clip_config.json")["preprocess_cfg"]["resize_mode"] == "squash"
