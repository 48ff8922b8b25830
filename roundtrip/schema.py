"""The one table that relates OpenAI CLIP keys to Hugging Face CLIPModel keys.

Every checkpoint key name in this project lives in this module. Each rule reads
left to right as the to-hf direction; to-openai is derived by swapping the two
sides and using the operation's declared inverse (see `roundtrip.mapping`).

Pattern fields, filled in when a key is parsed and reused when the other side
is formatted:
    {i}      a block index (one residual block of a tower; of a stage, in a ResNet)
    {wb}     "weight" or "bias"
    {stage}  a ResNet stage, 1 to 4
    {n}      one of a ResNet block's (or stem's) three convolutions and their BatchNorms, 1 to 3
    {bn}     a BatchNorm's parameters and running statistics
    {qkvc}   a ResNet attention pool's q, k, v or output (c) projection
Patterns are anchored: a key matches a pattern whole or not at all.

A rule with no HF side holds what CLIPModel has no place for (a ResNet vision tower): its keys are read and
checked in OpenAI's layout (which open_clip shares), never mapped.

Provenance: OpenAI names from `clip/model.py` (github.com/openai/CLIP);
HF names from `transformers/models/clip/modeling_clip.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from roundtrip.ops import Chunk, Identity, Operation, Transpose

_BATCH_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")  # torch.nn.BatchNorm2d's
PLACEHOLDERS = {"i": r"\d+", "wb": r"weight|bias", "stage": r"[1-4]", "n": r"[1-3]", "qkvc": r"[qkvc]",
                "bn": "|".join(_BATCH_NORM), "rest": r".+"}  # {rest}: any key part (unsupported variants)
BLOCK_FIELD = "i"
STAGE_FIELD = "stage"  # a ResNet's blocks are counted per stage
# The values every other placeholder takes in a complete checkpoint (a layer's weight and its bias, a ResNet's
# four stages, ...); {i} takes 0..n-1, n read off the blocks present.
PLACEHOLDER_VALUES = {"wb": ("weight", "bias"), "stage": ("1", "2", "3", "4"), "n": ("1", "2", "3"),
                      "qkvc": ("q", "k", "v", "c"), "bn": _BATCH_NORM}

# The two key layouts, named as the fields of `Rule`, and what their checkpoints are called.
LAYOUTS = {"openai": "an OpenAI CLIP", "hf": "a Hugging Face CLIPModel"}


TOWERS = ("text", "vision")
# What a vision tower is: CLIP's vision transformer, or OpenAI's ModifiedResNet (the RN50 family, which open_clip
# shares); CLIPModel has only the first.
VISION_KINDS = ("vit", "resnet")


@dataclass(frozen=True)
class Rule:
    openai: tuple[str, ...]
    hf: tuple[str, ...]
    op: Operation | None  # openai tensors -> hf tensors; op.inverse goes back. None: no HF side (hf is empty)
    tower: str | None  # "text" or "vision"; None for what the two towers share (a model with both)
    block: bool = False  # one per residual block of its tower ({i}): these count the tower's layers
    # The tower's projection to the shared embedding: a model of both towers has both, a tower alone may lack its
    # own (CLIPTextModel, Stable Diffusion 1.x's text encoder).
    projection: bool = False
    kind: str | None = None  # of a vision tower of one kind only (VISION_KINDS); None: any


# Per-block rules, written once relative to a block and prefixed per tower below.
_BLOCK_RULES = [
    # nn.MultiheadAttention packs q, k, v into one in_proj; HF keeps three Linears.
    (("attn.in_proj_{wb}",), ("self_attn.q_proj.{wb}", "self_attn.k_proj.{wb}", "self_attn.v_proj.{wb}"), Chunk(3, 0)),
    (("attn.out_proj.{wb}",), ("self_attn.out_proj.{wb}",), Identity()),
    (("ln_1.{wb}",), ("layer_norm1.{wb}",), Identity()),
    (("ln_2.{wb}",), ("layer_norm2.{wb}",), Identity()),
    (("mlp.c_fc.{wb}",), ("mlp.fc1.{wb}",), Identity()),
    (("mlp.c_proj.{wb}",), ("mlp.fc2.{wb}",), Identity()),
]


@dataclass(frozen=True)
class TowerModules:
    """Where a tower's parts sit in a model of one layout (module paths, which prefix their weights' keys): what
    the layer-by-layer check reads the outputs of."""

    block: str  # one residual block ({i})
    final_norm: str | None  # the last LayerNorm: text, over every token; vision, over the class token
    projection: str | None  # the projection layer, where it is a module (OpenAI's is a bare matrix)


# layout -> tower -> its modules (of a ViT vision tower)
TOWER_MODULES = {
    "openai": {"text": TowerModules("transformer.resblocks.{i}", "ln_final", None),
               "vision": TowerModules("visual.transformer.resblocks.{i}", "visual.ln_post", None)},
    "hf": {"text": TowerModules("text_model.encoder.layers.{i}", "text_model.final_layer_norm", "text_projection"),
           "vision": TowerModules("vision_model.encoder.layers.{i}", "vision_model.post_layernorm",
                                  "visual_projection")},
}

# A ResNet vision tower's blocks, in OpenAI's and open_clip's CLIP alike; it has no final LayerNorm, and its
# projection is its attention pool's last layer, whose output its encode_image returns.
RESNET_MODULES = TowerModules("visual.layer{stage}.{i}", None, None)

# What CLIPModel puts before each tower's keys and modules in the HF layout. CLIPTextModel and CLIPVisionModel,
# as transformers >= 5.6 builds and saves them, hold their tower without it ("flat"; older ones and the hub's
# folders keep it); the classes with a projection keep it.
HF_TOWER_PREFIXES = {"text": "text_model.", "vision": "vision_model."}

# tower -> (OpenAI block prefix, HF block prefix)
_TOWER_BLOCKS = {tower: (TOWER_MODULES["openai"][tower].block + ".", TOWER_MODULES["hf"][tower].block + ".")
                 for tower in TOWERS}

LOGIT_SCALE = "logit_scale"  # the two layouts share its name

RULES: tuple[Rule, ...] = (
    # Text tower.
    Rule(("token_embedding.weight",), ("text_model.embeddings.token_embedding.weight",), Identity(), "text"),
    # OpenAI keeps a bare Parameter; HF wraps it in an nn.Embedding.
    Rule(("positional_embedding",), ("text_model.embeddings.position_embedding.weight",), Identity(), "text"),
    Rule(("ln_final.{wb}",), ("text_model.final_layer_norm.{wb}",), Identity(), "text"),
    # OpenAI computes x @ P (P is width x embed); HF's nn.Linear stores P transposed.
    Rule(("text_projection",), ("text_projection.weight",), Transpose(), "text", projection=True),
    # Vision tower: a vision transformer.
    Rule(("visual.conv1.weight",), ("vision_model.embeddings.patch_embedding.weight",), Identity(), "vision",
         kind="vit"),
    Rule(("visual.class_embedding",), ("vision_model.embeddings.class_embedding",), Identity(), "vision",
         kind="vit"),
    Rule(("visual.positional_embedding",), ("vision_model.embeddings.position_embedding.weight",), Identity(),
         "vision", kind="vit"),
    # "pre_layrnorm" is HF's own spelling.
    Rule(("visual.ln_pre.{wb}",), ("vision_model.pre_layrnorm.{wb}",), Identity(), "vision", kind="vit"),
    Rule(("visual.ln_post.{wb}",), ("vision_model.post_layernorm.{wb}",), Identity(), "vision", kind="vit"),
    Rule(("visual.proj",), ("visual_projection.weight",), Transpose(), "vision", projection=True, kind="vit"),
    # Vision tower: a ResNet (clip/model.py's ModifiedResNet, open_clip's modified_resnet.py), which CLIPModel has
    # no place for. Its stem: three convolutions, each with a BatchNorm.
    Rule(("visual.conv{n}.weight",), (), None, "vision", kind="resnet"),
    Rule(("visual.bn{n}.{bn}",), (), None, "vision", kind="resnet"),
    # Each stage's first block alone downsamples its input for the residual (Bottleneck.downsample: "-1" is an
    # AvgPool2d without weights).
    Rule(("visual.layer{stage}.0.downsample.0.weight",), (), None, "vision", kind="resnet"),
    Rule(("visual.layer{stage}.0.downsample.1.{bn}",), (), None, "vision", kind="resnet"),
    # The attention pool, whose c_proj projects to the shared embedding.
    Rule(("visual.attnpool.positional_embedding",), (), None, "vision", kind="resnet"),
    Rule(("visual.attnpool.{qkvc}_proj.{wb}",), (), None, "vision", kind="resnet"),
    # Its bottleneck blocks, {i} counted per stage.
    Rule(("visual.layer{stage}.{i}.conv{n}.weight",), (), None, "vision", block=True, kind="resnet"),
    Rule(("visual.layer{stage}.{i}.bn{n}.{bn}",), (), None, "vision", block=True, kind="resnet"),
    # Shared: a model of both towers has it; a tower alone may keep it (Stable Diffusion 2.x's text encoder does).
    Rule((LOGIT_SCALE,), (LOGIT_SCALE,), Identity(), None),
) + tuple(
    Rule(
        tuple(openai_prefix + name for name in openai),
        tuple(hf_prefix + name for name in hf),
        op,
        tower=tower,
        block=True,
        kind="vit" if tower == "vision" else None,
    )
    for tower, (openai_prefix, hf_prefix) in _TOWER_BLOCKS.items()
    for openai, hf, op in _BLOCK_RULES
)

# 0-dim integer tensors that OpenAI's TorchScript archives carry beside the
# weights. They are not weights: each restates an architecture number (named
# as in `roundtrip.architecture.Architecture`), so to-hf drops them and to-openai can
# write them back from the config.
OPENAI_ARCHIVE_ATTRIBUTES = {
    "input_resolution": "image_resolution",
    "context_length": "context_length",
    "vocab_size": "vocab_size",
}

# Non-persistent buffers (arange) that older hub checkpoints still contain.
HF_IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# Keys a checkpoint of each layout may hold beside its weights; no rule needs them.
OPTIONAL_KEYS = {"openai": tuple(OPENAI_ARCHIVE_ATTRIBUTES), "hf": HF_IGNORED_KEYS}

# What a conversion may set aside (provenance.Record.aside) and put back on the way back to the same layout:
# the buffers older transformers saved, and logit_scale, which a tower alone keeps in OpenAI's layout (as
# Stable Diffusion 2's text encoder does) and transformers' one-tower classes have no place for.
ASIDE_KEYS = {"openai": (LOGIT_SCALE,), "hf": HF_IGNORED_KEYS}

# What each variant is, and why no format of clipconv's takes it (CLIPModel lacks it; OpenAI's code too, and
# clipconv maps only what all its formats share, so to-open-clip and compare refuse it as well).
_NOT_CONVERTED = "which clipconv does not convert"
_LAYER_SCALE = f"an open_clip model with layer scale (ViT-M-16-alt and the like), {_NOT_CONVERTED} (CLIPModel has none)"
# CLIP variants that no rule converts, each given away by a key of OpenAI's layout (which open_clip shares):
# pattern -> what the checkpoint is.
# Provenance: open_clip 3.3's timm_model.py (TimmModel as `visual.trunk`), model.py (CustomTextCLIP keeps its text
# tower under `text.`; logit_bias), transformer.py (LayerScale as ls_1/ls_2, AttentionalPooler as attn_pool, a
# Linear text projection with proj_bias) and coca_model.py (text_decoder).
UNSUPPORTED_VARIANTS = {
    "visual.trunk.{rest}": f"an open_clip model with a timm vision tower (SigLIP, EVA, ConvNeXt, ...), "
                           f"{_NOT_CONVERTED}: only CLIP's own vision transformer",
    "text.{rest}": f"an open_clip model with a custom text tower (text.* keys), {_NOT_CONVERTED}: only CLIP's own text "
                   "transformer",
    "{rest}.ls_1.gamma": _LAYER_SCALE,
    "{rest}.ls_2.gamma": _LAYER_SCALE,
    "visual.attn_pool.{rest}": f"an open_clip model with an attentional pooler (CoCa), {_NOT_CONVERTED} (CLIPModel has "
                               "none)",
    "text_decoder.{rest}": f"a CoCa model (text_decoder), {_NOT_CONVERTED} (CLIPModel has none)",
    "text_projection.{rest}": f"an open_clip model whose text projection is a layer with a bias (proj_bias), "
                              f"{_NOT_CONVERTED} (CLIPModel's has none)",
    "logit_bias": f"a model with a logit bias (SigLIP-style), {_NOT_CONVERTED} (CLIPModel has none)",
}

# Where each architecture number is read from, as clip.model.build_model does (and open_clip's shapes agree), per
# tower: name -> (OpenAI key, axis). Layer counts come from the per-tower block rules.
SHAPE_SOURCES = {
    "vision": {
        "vision_width": ("visual.conv1.weight", 0),
        "patch_size": ("visual.conv1.weight", -1),
        "vision_positions": ("visual.positional_embedding", 0),  # grid**2 + 1 (class token)
        "vision_mlp_width": ("visual.transformer.resblocks.0.mlp.c_fc.weight", 0),
    },
    "text": {
        "context_length": ("positional_embedding", 0),
        "vocab_size": ("token_embedding.weight", 0),
        "text_width": ("ln_final.weight", 0),
        "text_mlp_width": ("transformer.resblocks.0.mlp.c_fc.weight", 0),
    },
}
# Each tower's projection, where it has one: (OpenAI key, the axis that is the shared embedding's width).
PROJECTIONS = {"text": ("text_projection", 1), "vision": ("visual.proj", 1)}
# A ResNet vision tower's numbers, as build_model reads them (name -> (OpenAI key, axis)); its stages are counted
# by its block rules. Its projection is its attention pool's output layer, which it never lacks.
RESNET_SHAPE_SOURCES = {
    "vision_width": ("visual.layer1.0.conv1.weight", 0),  # the first stage's; the stem's first two are half of it
    "vision_positions": ("visual.attnpool.positional_embedding", 0),  # (resolution / 32)**2 + 1 (the mean)
    "embed_dim": ("visual.attnpool.c_proj.weight", 0),
    "pool_width": ("visual.attnpool.c_proj.weight", 1),  # the last stage's output: 32 x the width
}


# ---- Diffusion models' CLIP text encoders ---------------------------------------------------------------------
# A diffusion model's single-file checkpoint holds its text encoders under a prefix each, beside the UNet/VAE
# (and T5) tensors, which no conversion reads. Each encoder is a CLIP text tower alone, in one of the two key
# layouts above. Provenance: diffusers 0.42 `loaders/single_file_utils.py` (CHECKPOINT_KEY_NAMES,
# LDM_CLIP_PREFIX_TO_REMOVE, create_diffusers_clip_model_from_ldm) and the pipelines' components; Stability's
# generative-models `sgm/modules/encoders/modules.py` (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2); ComfyUI's
# `comfy/sd.py` (standalone text encoder files).


@dataclass(frozen=True)
class EmbeddedEncoder:
    """One CLIP text encoder inside a single-file checkpoint, and the diffusers component that holds it."""

    name: str  # what --encoder takes, as SD3 and ComfyUI name them: clip_l (OpenAI's ViT-L/14), clip_h, clip_g
    prefix: str  # what the file puts before each of its keys (which are in `layout`)
    layout: str  # "hf" or "openai"
    component: str  # the diffusers pipeline's folder for it: "text_encoder", "text_encoder_2"
    # diffusers' component holds the blocks the diffusion model reads: all but the last where it reads the
    # penultimate block's output through the final LayerNorm (Stable Diffusion 2.x), without the projection
    # and logit_scale that only the last block feeds.
    drops_last_block: bool = False
    # diffusers' component is a CLIPTextModelWithProjection where the file has no projection (SD3's CLIP-L):
    # its pipeline's code reads an identity there.
    identity_projection: bool = False


@dataclass(frozen=True)
class SingleFileLayout:
    """A diffusion model family's single-file checkpoint: its text encoders, each told by its own prefix."""

    family: str  # for people: "Stable Diffusion XL"
    encoders: tuple[EmbeddedEncoder, ...]


# The HF text tower's keys inside the older Stable Diffusion 1.x files lack CLIPModel's "text_model." (as
# transformers before 4.x saved CLIPTextModel); with it, they are the HF layout's keys.
SINGLE_FILE_LAYOUTS = (
    SingleFileLayout("Stable Diffusion 1.x", (
        EmbeddedEncoder("clip_l", "cond_stage_model.transformer.", "hf", "text_encoder"),)),
    SingleFileLayout("Stable Diffusion 2.x", (
        EmbeddedEncoder("clip_h", "cond_stage_model.model.", "openai", "text_encoder", drops_last_block=True),)),
    SingleFileLayout("Stable Diffusion XL", (
        EmbeddedEncoder("clip_l", "conditioner.embedders.0.transformer.", "hf", "text_encoder"),
        EmbeddedEncoder("clip_g", "conditioner.embedders.1.model.", "openai", "text_encoder_2"))),
    SingleFileLayout("Stable Diffusion XL refiner", (
        EmbeddedEncoder("clip_g", "conditioner.embedders.0.model.", "openai", "text_encoder_2"),)),
    SingleFileLayout("Stable Diffusion 3", (
        EmbeddedEncoder("clip_l", "text_encoders.clip_l.transformer.", "hf", "text_encoder",
                        identity_projection=True),
        EmbeddedEncoder("clip_g", "text_encoders.clip_g.transformer.", "hf", "text_encoder_2"))),
)
# A text encoder in a file of its own (ComfyUI's models/text_encoders, SD3's text_encoders/clip_{l,g}, Flux's
# clip_l): the HF layout's keys, no prefix; which encoder it is, its width tells (`roundtrip.single_file`).
STANDALONE_ENCODER_PREFIX = ""
# What a standalone encoder file may hold beside its weights, which no diffusers component keeps and a
# conversion back to a standalone file puts back: position_ids, and the logit_scale ComfyUI's CLIPSave writes.
STANDALONE_ASIDE_KEYS = (*HF_IGNORED_KEYS, LOGIT_SCALE)
ENCODER_NAMES = tuple(dict.fromkeys(encoder.name for layout in SINGLE_FILE_LAYOUTS for encoder in layout.encoders))
