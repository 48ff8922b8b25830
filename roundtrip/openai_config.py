"""OpenAI's CLIP code (`clip.model.CLIP`): what it fixes that other formats vary, and its constructor's arguments.

An OpenAI checkpoint carries no config: its architecture is its shapes plus these fixed choices.
"""

from __future__ import annotations

from roundtrip.architecture import RESNET_WIDENING, Architecture, ResNet, Shapes, Tower, argmax_pooling_problems

HEAD_WIDTH = 64  # clip.model.build_model: heads = width // 64, for both towers (a ResNet's attention pool's too)
MLP_RATIO = 4  # clip.model.ResidualAttentionBlock: c_fc is width -> 4 * width
ACTIVATION = "quick_gelu"  # clip.model.QuickGELU
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which clip.model.LayerNorm keeps


def _tower(shapes: Shapes, name: str) -> Tower | ResNet:
    if name == "vision" and shapes.vision_kind == "resnet":
        return shapes.resnet(_resnet_heads(shapes.vision_width))
    return shapes.tower(name, getattr(shapes, f"{name}_width") // HEAD_WIDTH, ACTIVATION, LAYER_NORM_EPS)


def _resnet_heads(width: int) -> int:
    """clip.model.CLIP: vision_heads = vision_width * 32 // 64 for a ResNet, over its attention pool's width."""
    return width * RESNET_WIDENING // HEAD_WIDTH


def architecture(shapes: Shapes) -> Architecture:
    """The architecture clip.model.build_model builds for these shapes."""
    vision, text = (_tower(shapes, name) if name in shapes.towers else None for name in ("vision", "text"))
    return shapes.architecture(vision=vision, text=text)


def incompatibilities(architecture: Architecture) -> list[str]:
    """Every way `architecture` departs from what OpenAI's model code can build; empty when it can."""
    problems = []
    for name in architecture.towers:
        tower: Tower | ResNet = getattr(architecture, name)
        if isinstance(tower, ResNet):
            if tower.heads != _resnet_heads(tower.width):
                problems.append(f"vision attention pool has {tower.heads} heads of {tower.head_width:g}, OpenAI's "
                                f"code uses heads of {HEAD_WIDTH}")
            continue
        if tower.width % HEAD_WIDTH or tower.heads != tower.width // HEAD_WIDTH:
            problems.append(f"{name} has {tower.heads} heads of {tower.head_width:g}, OpenAI's code uses "
                            f"heads of {HEAD_WIDTH}")
        if tower.mlp_width != MLP_RATIO * tower.width:
            problems.append(f"{name} MLP width is {tower.mlp_width}, OpenAI's code uses {MLP_RATIO} x {tower.width}")
        if tower.activation != ACTIVATION:
            problems.append(f"{name} activation is {tower.activation}, OpenAI's code uses {ACTIVATION}")
        if tower.layer_norm_eps != LAYER_NORM_EPS:
            problems.append(f"{name} LayerNorm eps is {tower.layer_norm_eps:g}, OpenAI's code uses {LAYER_NORM_EPS:g}")
    return problems + argmax_pooling_problems(architecture, "OpenAI's code")


def clip_kwargs(architecture: Architecture) -> dict[str, int]:
    """The arguments of `clip.model.CLIP.__init__` for this architecture (which it must be able to build)."""
    return {
        "embed_dim": architecture.embed_dim,
        "image_resolution": architecture.image_resolution,
        "vision_layers": architecture.vision.layers,
        "vision_width": architecture.vision.width,
        "vision_patch_size": architecture.patch_size,
        "context_length": architecture.context_length,
        "vocab_size": architecture.vocab_size,
        "transformer_width": architecture.text.width,
        "transformer_heads": architecture.text.heads,
        "transformer_layers": architecture.text.layers,
    }


def from_clip_kwargs(embed_dim: int, image_resolution: int, vision_layers: int | tuple[int, ...], vision_width: int,
                     vision_patch_size: int | None, context_length: int, vocab_size: int, transformer_width: int,
                     transformer_heads: int, transformer_layers: int) -> Architecture:
    """The architecture `clip.model.CLIP(...)` builds from these arguments (its heads for the text tower,
    width // 64 for a vision transformer; a ResNet where `vision_layers` is a tuple, its stages)."""
    def tower(width: int, layers: int, heads: int) -> Tower:
        return Tower(width, layers, heads, MLP_RATIO * width, ACTIVATION, LAYER_NORM_EPS, projected=True)

    resnet = isinstance(vision_layers, tuple)
    vision = ResNet(vision_layers, vision_width, _resnet_heads(vision_width)) if resnet else \
        tower(vision_width, vision_layers, vision_width // HEAD_WIDTH)
    return Architecture(embed_dim=embed_dim, image_resolution=image_resolution,
                        patch_size=None if resnet else vision_patch_size, context_length=context_length,
                        vocab_size=vocab_size, vision=vision,
                        text=tower(transformer_width, transformer_layers, transformer_heads), text_pool_token=None)
