"""Verification figures and wall times of `clipconv` on every released ViT architecture.

Usage: .venv/bin/python bench/released_figures.py [NAME ...]
Builds each checkpoint (random weights, OpenAI's fp16/fp32 mix) in a temporary
folder, runs `clipconv to-hf` and `clipconv to-openai` as a user would, and
prints one row per architecture. Not part of `make test`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from roundtrip.examples import RELEASED, random_openai_model

CLIPCONV = Path(sys.executable).parent / "clipconv"


def run(*args: Path | str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([str(CLIPCONV), *map(str, args)], capture_output=True, text=True, check=True)
    figure = re.search(r"max \|logit difference\| = (\S+)", result.stdout)
    return time.perf_counter() - start, figure.group(1) if figure else "-"


def main(names: list[str]) -> None:
    print("| architecture | checkpoint size | to-hf wall s | to-hf max abs diff | to-openai wall s | to-openai max abs diff |")
    print("|---|---|---|---|---|---|")
    for name in names or list(RELEASED):
        with tempfile.TemporaryDirectory(prefix="clipconv-figures-") as workdir:
            source = Path(workdir) / "source.pt"
            torch.save(random_openai_model(RELEASED[name]).state_dict(), source)
            hf_time, hf_gap = run("to-hf", source, Path(workdir) / "hf")
            back_time, back_gap = run("to-openai", Path(workdir) / "hf", Path(workdir) / "back.pt")
            size = source.stat().st_size / 1e6
            print(f"| {name} | {size:.0f} MB | {hf_time:.1f} | {hf_gap} | {back_time:.1f} | {back_gap} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
