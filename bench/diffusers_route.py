"""diffusers' own route from a single file to text encoder components, for `make bench` to stand beside
`clipconv to-diffusers`: load the whole file, build each encoder with diffusers' single-file converters
(`create_diffusers_clip_model_from_ldm`, what `from_single_file` runs), and `save_pretrained` each in float16.

Usage: .venv/bin/python bench/diffusers_route.py SINGLE_FILE CONFIGS DEST

CONFIGS is a folder with text_encoder/config.json and text_encoder_2/config.json (as from_single_file takes a
pipeline's configs; clipconv's own output serves).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, load_single_file_checkpoint

COMPONENTS = {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}


def main(source: str, configs: str, dest: str) -> None:
    checkpoint = load_single_file_checkpoint(source, local_files_only=True)
    for component, class_name in COMPONENTS.items():
        model = create_diffusers_clip_model_from_ldm(getattr(transformers, class_name), checkpoint,
                                                     subfolder=component, config=configs, torch_dtype=torch.float16,
                                                     local_files_only=True)
        model.save_pretrained(Path(dest) / component)


if __name__ == "__main__":
    main(*sys.argv[1:])
