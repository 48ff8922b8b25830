"""Random-weight checkpoints with real CLIP architectures, for the demo, tests and benchmarks.

Built with OpenAI's own model code (`clip.model.CLIP`) or open_clip's (`open_clip.model.CLIP`), so their keys
and shapes come from those projects, not from this one's schema.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import torch

from roundtrip import openai_config
from roundtrip.architecture import Architecture, Shapes
from roundtrip.facts import OPEN_CLIP_CONFIG, OPEN_CLIP_PICKLE, OPEN_CLIP_SAFETENSORS
from roundtrip.openai_config import from_clip_kwargs
from roundtrip.references import openai_code
from roundtrip.schema import OPENAI_ARCHIVE_ATTRIBUTES

_TEXT_B = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
_TEXT_L = dict(context_length=77, vocab_size=49408, transformer_width=768, transformer_heads=12, transformer_layers=12)

# The ViT models OpenAI released (names as in clip.available_models()).
RELEASED = {
    "ViT-B/32": from_clip_kwargs(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                                 vision_patch_size=32, **_TEXT_B),
    "ViT-B/16": from_clip_kwargs(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                                 vision_patch_size=16, **_TEXT_B),
    "ViT-L/14": from_clip_kwargs(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                                 vision_patch_size=14, **_TEXT_L),
    "ViT-L/14@336px": from_clip_kwargs(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                                       vision_patch_size=14, **_TEXT_L),
}

_TEXT_RN50X4 = dict(context_length=77, vocab_size=49408, transformer_width=640, transformer_heads=10,
                    transformer_layers=12)
_TEXT_RN50X64 = dict(context_length=77, vocab_size=49408, transformer_width=1024, transformer_heads=16,
                     transformer_layers=12)

# The ResNets OpenAI released (clip.available_models()), as clip.model.build_model reads them off the archives.
RELEASED_RESNETS = {
    "RN50": from_clip_kwargs(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                             vision_patch_size=None, **_TEXT_B),
    "RN101": from_clip_kwargs(embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3), vision_width=64,
                              vision_patch_size=None, **_TEXT_B),
    "RN50x4": from_clip_kwargs(embed_dim=640, image_resolution=288, vision_layers=(4, 6, 10, 6), vision_width=80,
                               vision_patch_size=None, **_TEXT_RN50X4),
    "RN50x16": from_clip_kwargs(embed_dim=768, image_resolution=384, vision_layers=(6, 8, 18, 8), vision_width=96,
                                vision_patch_size=None, **_TEXT_L),
    "RN50x64": from_clip_kwargs(embed_dim=1024, image_resolution=448, vision_layers=(3, 15, 36, 10), vision_width=128,
                                vision_patch_size=None, **_TEXT_RN50X64),
}

# Small enough to build, convert and verify in seconds; real vocabulary and context.
DEMO = from_clip_kwargs(embed_dim=128, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16,
                        context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                        transformer_layers=2)

TRAINED_LOGIT_SCALE = math.log(100.0)  # where OpenAI's training ends (clamped at 100)


def random_openai_model(architecture: Architecture, seed: int = 0, openai_dtypes: bool = True):
    """A `clip.model.CLIP` with OpenAI's random init; with `openai_dtypes`, halved as OpenAI's releases are."""
    code = openai_code("model")
    torch.manual_seed(seed)
    model = code.CLIP(**openai_config.clip_kwargs(architecture)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(TRAINED_LOGIT_SCALE)
    _trained_batch_norms(model)
    if openai_dtypes:
        code.convert_weights(model)  # fp16 linear/conv/attention weights and projections, fp32 elsewhere
    return model


def random_openai_state_dict(architecture: Architecture, seed: int = 0, openai_dtypes: bool = True) -> dict:
    return random_openai_model(architecture, seed, openai_dtypes).state_dict()


def save_torchscript_archive(model, path: Path) -> None:
    """Trace `model` like OpenAI's released archives, with their three 0-dim metadata tensors."""
    architecture = _register_archive_attributes(model)
    size = architecture.image_resolution
    images = torch.zeros(1, 3, size, size, dtype=model.dtype)
    tokens = torch.zeros(1, architecture.context_length, dtype=torch.long)
    tokens[0, 0], tokens[0, 1] = architecture.vocab_size - 2, architecture.vocab_size - 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated"
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks inside nn.MultiheadAttention
        traced = torch.jit.trace(model, (images, tokens), check_trace=False)
        torch.jit.save(traced, str(path))


def _register_archive_attributes(model) -> Architecture:
    """Give `model` the 0-dim buffers OpenAI's archives carry, each restating an architecture number."""
    architecture = openai_config.architecture(Shapes.of(model.state_dict()))
    for key, field in OPENAI_ARCHIVE_ATTRIBUTES.items():
        if hasattr(model, key):
            delattr(model, key)  # clip.model.CLIP keeps some of these numbers as plain attributes
        model.register_buffer(key, torch.tensor(getattr(architecture, field)))
    return architecture


class _ScriptableLayerNorm(torch.nn.LayerNorm):
    """clip.model.LayerNorm's computation (fp32 inside, input dtype out) in a form TorchScript compiles."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = torch.nn.functional.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return normalized.type(x.dtype)


def _scriptable_forward(self, image: torch.Tensor, text: torch.Tensor):
    """clip.model.CLIP.forward with norm(p=2) spelled out, which TorchScript requires."""
    image_features = self.encode_image(image)
    text_features = self.encode_text(text)
    image_features = image_features / image_features.norm(p=2, dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(p=2, dim=-1, keepdim=True)
    logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
    return logits_per_image, logits_per_image.t()


def save_scripted_archive(model, path: Path) -> None:
    """`torch.jit.script` of a clip.model.CLIP, patched only where TorchScript cannot compile OpenAI's code."""
    for module in model.modules():
        if type(module) is openai_code("model").LayerNorm:
            module.__class__ = _ScriptableLayerNorm  # its forward calls super(), which TorchScript cannot compile
    model.__class__ = type("CLIP", (type(model),), {"forward": _scriptable_forward})
    _register_archive_attributes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated"
        torch.jit.save(torch.jit.script(model), str(path))


def random_open_clip_model(model_cfg: dict, seed: int = 0):
    """open_clip's `CLIP` built from `model_cfg` with open_clip's own random init, in float32."""
    from open_clip.model import CLIP

    config = copy.deepcopy(model_cfg)
    config.pop("custom_text", None)  # open_clip's factory takes it out before building, too
    torch.manual_seed(seed)
    model = CLIP(**config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(TRAINED_LOGIT_SCALE)
    _trained_batch_norms(model)
    return model


def _trained_batch_norms(model) -> None:
    """Give a ResNet's BatchNorms random scales, shifts and running statistics, as training leaves them: as
    initialised (1, 0, 0, 1; OpenAI's zeroes each block's last scale), every block's convolutions would be
    invisible in its output, and so would be any mistake made with them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(1000)


def save_open_clip_folder(state_dict: dict, model_cfg: dict, folder: Path, preprocess_cfg: dict | None = None,
                          pickle: bool = False) -> None:
    """A folder as open_clip's hub folders are: open_clip_config.json beside open_clip_model.safetensors (or,
    with `pickle`, open_clip_pytorch_model.bin), written with safetensors' and torch's own writers."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2))
    if pickle:
        torch.save(state_dict, folder / OPEN_CLIP_PICKLE)
    else:
        save_file({key: tensor.contiguous() for key, tensor in state_dict.items()}, folder / OPEN_CLIP_SAFETENSORS)


def training_checkpoint(state_dict: dict, epoch: int = 3) -> dict:
    """What open_clip's training loop saves as epoch_N.pt under DistributedDataParallel."""
    return {
        "epoch": epoch, "name": "clipconv-example",
        "state_dict": {f"module.{key}": tensor for key, tensor in state_dict.items()},
        "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(2)}},
                      "param_groups": [{"lr": 5e-4, "weight_decay": 0.2, "params": [0]}]},
    }
