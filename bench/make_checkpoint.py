"""Write a released CLIP architecture with random weights, as its users get it.

Usage: python bench/make_checkpoint.py ARCHITECTURE PATH
  ARCHITECTURE  an OpenAI model (ViT-L/14: a torch.save state dict in OpenAI's fp16/fp32 mix, like a released
                file) or open_clip:NAME (open_clip:ViT-H-14: a hub folder, open_clip_config.json beside
                open_clip_model.safetensors, float32)

Built with OpenAI's or open_clip's model code. The result appears under PATH only once complete, so an
interrupted run leaves no half-written checkpoint in the cache. `bench/run.py` runs this in a subprocess to
keep torch out of its own memory (see run.py on peak RSS).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from roundtrip.examples import RELEASED, random_open_clip_model, random_openai_state_dict, save_open_clip_folder
from roundtrip.open_clip_config import registry_config

OPEN_CLIP = "open_clip:"


def main(architecture: str, path: str) -> None:
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    if architecture.startswith(OPEN_CLIP):
        model_cfg = registry_config(architecture.removeprefix(OPEN_CLIP))
        save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg, partial)
    else:
        torch.save(random_openai_state_dict(RELEASED[architecture]), partial)
    os.replace(partial, final)


if __name__ == "__main__":
    main(*sys.argv[1:])
