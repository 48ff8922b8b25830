"""What a model expects of its images before the first layer: the normalisation and the resizing."""

from __future__ import annotations

from dataclasses import dataclass

from roundtrip.facts import OPENAI_MEAN, OPENAI_STD


@dataclass(frozen=True)
class Preprocessing:
    """clip's transform by default: shortest side resized (bicubic), centre crop, OpenAI's mean and std."""

    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"  # open_clip's names: "bicubic", "bilinear", "random"
    resize_mode: str = "shortest"  # open_clip's: "shortest", "longest", "squash"
