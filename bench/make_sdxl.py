"""Write an SDXL-size single-file checkpoint (6.9 GB of float16) for `make bench`.

Usage: .venv/bin/python bench/make_sdxl.py DEST [--tiny]

Its text encoders have Stable Diffusion XL base's real shapes and key names (CLIP ViT-L/14's text tower, 12
blocks 768 wide, under conditioner.embedders.0.transformer.; open_clip's ViT-bigG-14 text tower, 32 blocks 1280
wide with its projection and logit_scale, under conditioner.embedders.1.model.), with random weights
(roundtrip.testing.single_file_tensors). The UNet and VAE are stand-ins of their real sizes (2,567 M and 84 M
parameters) in 20 tensors, which no conversion of the encoders decodes. `--tiny`: one block per encoder and a
small UNet (seconds; to check this script).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from roundtrip.testing import single_file_tensors

UNET_PARAMETERS, VAE_PARAMETERS = 2_567_463_684, 83_653_863  # SDXL base's, as diffusers counts them
STAND_IN_TENSORS = 20


def stand_ins(parameters: int, prefix: str, pieces: int) -> dict[str, torch.Tensor]:
    size = -(-parameters // pieces)
    generator = torch.Generator().manual_seed(0)
    return {f"{prefix}stand_in.{index}.weight": torch.randn(size, generator=generator, dtype=torch.float16)
            for index in range(pieces)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--tiny", action="store_true")
    arguments = parser.parse_args()
    scale = 1000 if arguments.tiny else 1
    layers = {"clip_l": 1, "clip_g": 1} if arguments.tiny else {"clip_l": 12, "clip_g": 32}
    tensors = {**stand_ins(UNET_PARAMETERS // scale, "model.diffusion_model.", STAND_IN_TENSORS - 2),
               **stand_ins(VAE_PARAMETERS // scale, "first_stage_model.", 2),
               **single_file_tensors("Stable Diffusion XL", layers=layers, dtype="float16")}
    save_file(tensors, arguments.dest)


if __name__ == "__main__":
    main()
