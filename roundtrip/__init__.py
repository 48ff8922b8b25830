"""clipconv: exact conversion of CLIP checkpoints between OpenAI's, Hugging Face's and open_clip's formats.

State-dict level (no I/O):      roundtrip.to_hf(openai_sd), roundtrip.to_openai(hf_sd)
File level (what the CLI runs): roundtrip.convert(src, dest, to="hf" | "openai" | "open_clip"), and
                                roundtrip.convert_to_hf / convert_to_openai / convert_to_open_clip(src, dest)
Diffusion models' text encoders:  roundtrip.convert_to_diffusers(single_file, dest),
                                roundtrip.convert_to_single_file(components, dest, base=single_file)
"""

__version__ = "0.1.0"

_PUBLIC = {"to_hf": "mapping", "to_openai": "mapping", "convert": "pipeline", "convert_to_hf": "pipeline",
           "convert_to_openai": "pipeline", "convert_to_open_clip": "pipeline", "convert_to_diffusers": "pipeline",
           "convert_to_single_file": "pipeline"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    # Lazy, so that `clipconv --help` and `import roundtrip` do not pay for torch.
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"roundtrip.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'roundtrip' has no attribute {name!r}")
