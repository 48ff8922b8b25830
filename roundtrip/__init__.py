"""clipconv: exact, two-way conversion between OpenAI CLIP and Hugging Face CLIPModel checkpoints.

State-dict level (no I/O):   roundtrip.to_hf(openai_sd), roundtrip.to_openai(hf_sd)
File level (what the CLI runs): roundtrip.convert_to_hf(src, dest), roundtrip.convert_to_openai(src, dest)
"""

__version__ = "0.1.0"

from roundtrip.convert import convert_to_hf, convert_to_openai  # noqa: E402
from roundtrip.mapping import to_hf, to_openai  # noqa: E402

__all__ = ["convert_to_hf", "convert_to_openai", "to_hf", "to_openai", "__version__"]
