"""Baseline for `make bench`: the module-copying approach of transformers' conversion script.

Usage: python bench/baseline_module_copy.py SOURCE DEST
       python bench/baseline_module_copy.py --open-clip SOURCE_FOLDER DEST

Does what `convert_clip_original_pytorch_to_hf.py` in transformers does, step by
step, so the benchmark measures that approach and not a strawman: load the
checkpoint with `clip.load(..., jit=False)` and upcast it to float32, build a
randomly initialised `CLIPModel`, copy the weights module by module (q/k/v split
from `in_proj`, the two projections transposed), run one forward pass of both
models and compare their logits, then `save_pretrained(DEST)`.

Three defects of the original are not reproduced, because they would make it
either wrong or unable to run here: the config is inferred from the tensor
shapes (the original hard-codes ViT-B/32), the non-existent
`visual_model.layer_norm` line is left out, and the text is a real `clip.tokenize`
prompt (the original's `torch.arange(0, 77)` has no end-of-text token, so
transformers >= 4.32 pools it at the wrong position). The forward pass has the
original's size: one image and one text of 77 tokens.
SOURCE must be a `torch.save` state dict or an OpenAI TorchScript archive.

With --open-clip, the same the open_clip way: `open_clip.create_model_and_transforms("local-dir:SOURCE")`
loads the model (its modules are named as OpenAI's, so the same copies apply), the config comes from its
open_clip_config.json (through clipconv's mapping, as a hand-written script would spell it), and the logits
are compared on an `open_clip.tokenize` prompt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from roundtrip import hf_config, open_clip_config, openai_config
from roundtrip.architecture import Architecture, Shapes
from roundtrip.verify import PROBE_TEXTS, TOLERANCE

IMAGES = 1  # as the original: torch.randn(1, 3, 224, 224)
TEXTS = list(PROBE_TEXTS)[:1]  # one text of 77 tokens, as the original's arange(0, 77)


def copy_linear(hf_linear, openai_linear) -> None:
    """Any module with `weight` and `bias`: Linear and LayerNorm alike, as in the original."""
    hf_linear.weight = openai_linear.weight
    hf_linear.bias = openai_linear.bias


def copy_attention(hf_attention, openai_attention) -> None:
    """nn.MultiheadAttention keeps q, k and v stacked in `in_proj`; CLIPAttention has three Linears."""
    weights = openai_attention.in_proj_weight.chunk(3, dim=0)
    biases = openai_attention.in_proj_bias.chunk(3, dim=0)
    for projection, weight, bias in zip(
        (hf_attention.q_proj, hf_attention.k_proj, hf_attention.v_proj), weights, biases, strict=True
    ):
        projection.weight.data = weight
        projection.bias.data = bias
    copy_linear(hf_attention.out_proj, openai_attention.out_proj)


def copy_layers(hf_layers, openai_blocks) -> None:
    for hf_layer, block in zip(hf_layers, openai_blocks, strict=True):
        copy_linear(hf_layer.layer_norm1, block.ln_1)
        copy_linear(hf_layer.layer_norm2, block.ln_2)
        copy_linear(hf_layer.mlp.fc1, block.mlp.c_fc)
        copy_linear(hf_layer.mlp.fc2, block.mlp.c_proj)
        copy_attention(hf_layer.self_attn, block.attn)


def copy_text_tower(hf_model, openai_model) -> None:  # open_clip's CLIP has the same attributes
    text = hf_model.text_model
    text.embeddings.token_embedding.weight = openai_model.token_embedding.weight
    text.embeddings.position_embedding.weight.data = openai_model.positional_embedding
    copy_linear(text.final_layer_norm, openai_model.ln_final)
    copy_layers(text.encoder.layers, openai_model.transformer.resblocks)
    # OpenAI computes x @ proj; nn.Linear computes x @ weight.T
    hf_model.text_projection.weight.data = openai_model.text_projection.data.T


def copy_vision_tower(hf_model, openai_model) -> None:
    vision, visual = hf_model.vision_model, openai_model.visual
    vision.embeddings.patch_embedding.weight.data = visual.conv1.weight.data
    vision.embeddings.class_embedding = visual.class_embedding
    vision.embeddings.position_embedding.weight.data = visual.positional_embedding.data
    copy_linear(vision.pre_layrnorm, visual.ln_pre)  # sic: transformers' attribute name
    copy_linear(vision.post_layernorm, visual.ln_post)
    copy_layers(vision.encoder.layers, visual.transformer.resblocks)
    hf_model.visual_projection.weight.data = visual.proj.data.T


@torch.no_grad()
def compare_logits(hf_model, logits_of, tokenize, architecture: Architecture) -> float:
    tokens = tokenize(list(TEXTS), context_length=architecture.context_length)
    size = architecture.image_resolution
    images = torch.randn(IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0))
    hf_logits = hf_model(input_ids=tokens, pixel_values=images).logits_per_image
    return (hf_logits - logits_of(images, tokens)).abs().max().item()


def load_openai(source: str):
    """OpenAI's model in float32, its architecture, its logits and tokenizer, as the original script has them."""
    import clip

    model, _ = clip.load(source, device="cpu", jit=False)
    model = model.float().eval()
    architecture = openai_config.architecture(Shapes.of(model.state_dict()))
    return model, architecture, lambda images, tokens: model(images, tokens)[0], clip.tokenize


def load_open_clip(source: str):
    """open_clip's model as open_clip loads a hub folder, its architecture, logits and tokenizer."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{source}")
    model = model.eval()
    model_cfg = json.loads((Path(source) / "open_clip_config.json").read_text())["model_cfg"]
    architecture = open_clip_config.architecture(model_cfg, Shapes.of(model.state_dict()))
    return model, architecture, lambda images, tokens: model.get_logits(images, tokens)[0], open_clip.tokenize


@torch.no_grad()
def convert(source: str, dest: str, load=load_openai) -> float:
    from transformers import CLIPConfig, CLIPModel

    model, architecture, logits_of, tokenize = load(source)
    hf_model = CLIPModel(CLIPConfig.from_dict(hf_config.config(architecture))).eval()

    copy_text_tower(hf_model, model)
    copy_vision_tower(hf_model, model)
    hf_model.logit_scale = model.logit_scale

    difference = compare_logits(hf_model, logits_of, tokenize, architecture)
    if not difference <= TOLERANCE:
        raise SystemExit(f"baseline: logits differ by {difference:.3g} (tolerance {TOLERANCE:g}); nothing written")
    hf_model.save_pretrained(dest)
    return difference


def main(argv: list[str]) -> None:
    load = load_open_clip if argv[:1] == ["--open-clip"] else load_openai
    arguments = argv[1:] if load is load_open_clip else argv
    if len(arguments) != 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    difference = convert(*arguments, load=load)
    print(f"Wrote {arguments[1]}; max |logit difference| = {difference:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
