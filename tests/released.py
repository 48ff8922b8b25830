"""The steps of tests/test_released_architectures.py, each run in a fresh interpreter of its own:

    python tests/released.py STEP ARGUMENTS...

A full-depth open_clip ViT-H-14 is 4 GB in float32. Built, run or compared inside the test session, what one
step holds would stay in that process (glibc keeps freed memory; the pages of a mapped file count as resident
once read) and add up with the next: each step gives everything back when its process ends.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from roundtrip import open_clip_config, references, verify
from roundtrip.architecture import Shapes
from roundtrip.examples import (
    RELEASED,
    RELEASED_RESNETS,
    random_open_clip_model,
    random_openai_model,
    save_open_clip_folder,
    save_torchscript_archive,
)
from roundtrip.schema import OPENAI_ARCHIVE_ATTRIBUTES

REFERENCE = "reference.pt"  # beside the source: the probe images and tokens and the source model's logits


def make_openai(name: str, file_format: str, folder: str) -> None:
    """An OpenAI release's architecture with random weights (OpenAI's fp16 mix) as `folder`/source.pt, and the
    logits OpenAI's code computes from it in float32."""
    architecture = {**RELEASED, **RELEASED_RESNETS}[name]
    model = random_openai_model(architecture, seed=0)
    path = Path(folder) / "source.pt"
    if file_format == "torchscript":
        save_torchscript_archive(model, path)
    else:
        torch.save(model.state_dict(), path)
    del model
    weights = {key: tensor for key, tensor in load_openai(path, file_format).items()
               if key not in OPENAI_ARCHIVE_ATTRIBUTES}
    images, tokens = verify.probe_images(architecture), verify.probe_tokens(architecture)
    logits = references.openai_outputs(weights, architecture, images, tokens)["logits"]
    torch.save({"images": images, "tokens": tokens, "logits": logits}, Path(folder) / REFERENCE)


def make_open_clip(name: str, folder: str) -> None:
    """open_clip's registry model `name` with random weights as a hub folder `folder`/source, and its logits.
    The weights go in open_clip_pytorch_model.bin, which hub folders also come with: torch writes it tensor by
    tensor, where safetensors' save_file would hold a second copy of them."""
    model_cfg = open_clip_config.registry_config(name)
    model = random_open_clip_model(model_cfg, seed=0)
    architecture = open_clip_config.architecture(model_cfg, Shapes.of(model.state_dict()))
    images, tokens = verify.probe_images(architecture), verify.probe_tokens(architecture)
    with torch.no_grad():
        logits = model.get_logits(images, tokens)[0]
    save_open_clip_folder(model.state_dict(), model_cfg, Path(folder) / "source", pickle=True)
    torch.save({"images": images, "tokens": tokens, "logits": logits}, Path(folder) / REFERENCE)


def hf_gap(hf_folder: str, reference: str) -> None:
    """Print the largest |difference| between transformers' logits of an HF folder and the reference logits."""
    from transformers import CLIPModel

    expected = torch.load(reference, weights_only=True)
    model = CLIPModel.from_pretrained(hf_folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=expected["tokens"], pixel_values=expected["images"]).logits_per_image
    print((logits - expected["logits"]).abs().max().item())


def open_clip_gap(folder: str, reference: str) -> None:
    """Print the largest |difference| between the logits of an open_clip folder, loaded as its users load one
    (`local-dir:`), and the reference logits."""
    import open_clip

    expected = torch.load(reference, weights_only=True)
    model = open_clip.create_model_and_transforms(f"local-dir:{folder}")[0].float().eval()
    with torch.no_grad():
        logits = model.get_logits(expected["images"], expected["tokens"])[0]
    print((logits - expected["logits"]).abs().max().item())


def same_openai_tensors(source: str, file_format: str, back: str) -> None:
    """Exit 0 if `back` holds every tensor of the OpenAI source, in bits, dtype and order (as the archive has
    them, for a TorchScript archive)."""
    original, written = load_openai(Path(source), file_format), torch.load(back, weights_only=True, mmap=True)
    assert list(written) == list(original), "keys or their order differ"
    for key, tensor in original.items():
        assert_same_bits(key, written[key], tensor)


def same_open_clip_tensors(pickled: str, safetensors: str, parts: str = "8") -> None:
    """Exit 0 if both files hold the same tensors in bits and dtypes, compared a part at a time: two ViT-H-14s
    are 8 GB, and the pages of a mapped file count as resident once read."""
    import gc

    from safetensors import safe_open

    keys = list(torch.load(pickled, weights_only=True, mmap=True))
    for part in range(int(parts)):
        original = torch.load(pickled, weights_only=True, mmap=True)
        with safe_open(safetensors, "pt") as back:
            assert sorted(back.keys()) == sorted(keys), "keys differ"
            for key in keys[part::int(parts)]:
                assert_same_bits(key, back.get_tensor(key), original[key])
        del original  # unmapped with its last tensor
        gc.collect()


def load_openai(path: Path, file_format: str) -> dict:
    if file_format == "torchscript":
        return torch.jit.load(str(path)).state_dict()
    return torch.load(path, weights_only=True)


def assert_same_bits(key: str, found: torch.Tensor, expected: torch.Tensor) -> None:
    assert found.dtype == expected.dtype and found.shape == expected.shape, key
    assert torch.equal(found.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), key


STEPS = {"make-openai": make_openai, "make-open-clip": make_open_clip, "hf-gap": hf_gap, "open-clip-gap": open_clip_gap,
         "same-openai-tensors": same_openai_tensors, "same-open-clip-tensors": same_open_clip_tensors}

if __name__ == "__main__":
    STEPS[sys.argv[1]](*sys.argv[2:])
