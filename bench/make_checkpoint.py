"""Write a released CLIP architecture with random weights as a `torch.save` state dict.

Usage: python bench/make_checkpoint.py ARCHITECTURE PATH   (e.g. ViT-L/14 ~/.cache/clipconv-bench/ViT-L-14.pt)

Built with OpenAI's model code, in OpenAI's fp16/fp32 mix, like a released file.
The file appears under PATH only once complete, so an interrupted run leaves no
half-written checkpoint in the cache. `bench/run.py` runs this in a subprocess
to keep torch out of its own memory (see run.py on peak RSS).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from roundtrip.examples import RELEASED, random_openai_state_dict


def main(architecture: str, path: str) -> None:
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    torch.save(random_openai_state_dict(RELEASED[architecture]), partial)
    os.replace(partial, final)


if __name__ == "__main__":
    main(*sys.argv[1:])
