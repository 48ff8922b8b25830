"""Property-based regression tests of CLIP checkpoints and converters, with hypothesis as the engine.

    from hypothesis import given, settings
    from roundtrip.testing import architectures, assert_equivalent, write_checkpoint

    @settings(max_examples=5, deadline=None)
    @given(architecture=architectures(family="open_clip"))
    def test_my_export_keeps_the_model(tmp_path_factory, architecture):
        folder = tmp_path_factory.mktemp("case")
        source = write_checkpoint(folder / "model", architecture, format="open_clip")
        my_export(source, folder / "exported")   # your converter, fine-tuning export, ...
        assert_equivalent(source, folder / "exported")

Public: `architectures`, `open_clip_model_configs`, `checkpoints`, `random_state_dict`, `write_checkpoint`,
`assert_equivalent`, and the names FAMILIES, FORMATS and DTYPE_MIXES they take. Every checkpoint is built with
its format's own model code (OpenAI's, open_clip's, transformers') and random weights, small enough for tests.
The other strategies at the end are the ones clipconv's own suite uses. Needs hypothesis
(`pip install clipconv[test]`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from roundtrip import hf_config, mapping, open_clip_config, openai_config
from roundtrip.architecture import RESNET_DOWNSAMPLING, RESNET_WIDENING, Architecture
from roundtrip.compare import TOLERANCE, Report, compare
from roundtrip.dtypes import DTYPES
from roundtrip.errors import ClipconvError
from roundtrip.facts import HF_SAFETENSORS
from roundtrip.formats import SourceOptions
from roundtrip.openai_config import HEAD_WIDTH, from_clip_kwargs
from roundtrip.schema import HF_TOWER_PREFIXES, TOWERS, VISION_KINDS

__all__ = ["FAMILIES", "FORMATS", "DTYPE_MIXES", "architectures", "open_clip_model_configs", "checkpoints",
           "Checkpoint", "random_state_dict", "write_checkpoint", "assert_equivalent"]

FAMILIES = ("openai", "open_clip")  # OpenAI's (QuickGELU, heads of 64, MLP 4x) or open_clip's (any of those)
FORMATS = ("openai", "hf", "open_clip")
# How checkpoints in the wild store their weights: all float32; OpenAI's release mix (fp16 linear, conv and
# attention weights and projections, fp32 elsewhere); all float16; all bfloat16.
DTYPE_MIXES = ("float32", "openai", "float16", "bfloat16")
PATCH_SIZES = (8, 14, 16, 32)
# A ResNet's: its stem halves the width it starts with, its attention pool attends over 32 x it.
_RESNET_WIDTHS = st.sampled_from([4, 8, 16, 24])
_resnet_stages = st.tuples(*[st.integers(1, 2)] * 4)
OPENAI_VOCAB_SIZE = 49408
_VOCAB_SIZES = st.sampled_from([64, 100, 1000, OPENAI_VOCAB_SIZE])


# ---- architectures -------------------------------------------------------------------------------------------


def architectures(family: str = "openai", vocab_sizes=_VOCAB_SIZES, towers: str = "both",
                  vision: str = "vit") -> st.SearchStrategy[Architecture]:
    """Random valid CLIP architectures of a family, small enough to build, convert and compare in a second:
    whole models (`towers="both"`), a text or vision tower alone with or without its projection ("one"), or
    either ("any"); with a vision transformer (`vision="vit"`) or a ResNet ("resnet": OpenAI's and
    open_clip's formats hold one, HF's does not)."""
    if vision not in VISION_KINDS:
        raise ValueError(f"vision must be one of {', '.join(VISION_KINDS)}, not {vision!r}")
    if family == "openai":
        whole = _openai_architectures(vocab_sizes, vision)
    elif family == "open_clip":
        whole = open_clip_model_configs(vocab_sizes, vision).map(open_clip_config.claimed_architecture)
    else:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    # a ResNet's projection is its attention pool's last layer: never left out
    alone = st.builds(lambda architecture, tower, projected: architecture.alone(tower, projected), whole,
                      st.sampled_from(TOWERS), st.booleans() if vision == "vit" else st.just(True))
    drawn = {"both": whole, "one": alone, "any": st.one_of(whole, alone)}
    if towers not in drawn:
        raise ValueError(f"towers must be one of {', '.join(drawn)}, not {towers!r}")
    return drawn[towers]


@st.composite
def _openai_architectures(draw, vocab_sizes, vision: str = "vit") -> Architecture:
    """OpenAI's family: widths in multiples of 64 (heads of 64), 1-3 layers per tower; a ResNet of 1-2 blocks
    per stage, its attention pool's heads of 64 too."""
    patch = draw(st.sampled_from(PATCH_SIZES))
    text_width = HEAD_WIDTH * draw(st.integers(1, 3))
    resnet = vision == "resnet"
    return from_clip_kwargs(
        embed_dim=draw(st.sampled_from([32, 64, 96, 128])),
        image_resolution=RESNET_DOWNSAMPLING * draw(st.integers(1, 3)) if resnet else patch * draw(st.integers(1, 4)),
        vision_layers=draw(_resnet_stages) if resnet else draw(st.integers(1, 3)),
        vision_width=draw(_RESNET_WIDTHS) if resnet else HEAD_WIDTH * draw(st.integers(1, 3)),
        vision_patch_size=None if resnet else patch,
        context_length=draw(st.integers(8, 77)),
        vocab_size=draw(vocab_sizes),
        transformer_width=text_width,
        transformer_heads=text_width // HEAD_WIDTH,
        transformer_layers=draw(st.integers(1, 3)),
    )


@st.composite
def open_clip_model_configs(draw, vocab_sizes=_VOCAB_SIZES, vision: str = "vit") -> dict:
    """Small open_clip model configs of the kinds released: gelu or QuickGELU, vision heads of widths other
    than 64, text heads chosen apart from them, MLP ratios that are not whole (bigG's 4.9231), and sometimes
    another LayerNorm eps; with `vision="resnet"`, a ResNet vision tower (RN50's kind) of 1-2 blocks per stage
    and any head width that splits its attention pool."""
    patch = draw(st.sampled_from(PATCH_SIZES))
    vision_width = draw(st.integers(1, 3)) * draw(st.sampled_from([32, 48, 64, 80]))
    heads = draw(st.integers(1, 3))
    text_width = heads * draw(st.sampled_from([16, 32, 64]))

    def tower_extras() -> dict:
        extras = {}
        ratio = draw(st.sampled_from([4.0, 4.9231, 3.5, 2.0]))
        if ratio != 4.0:
            extras["mlp_ratio"] = ratio
        if draw(st.booleans()):
            extras["norm_kwargs"] = {"eps": draw(st.sampled_from([1e-6, 1e-5, 1e-3]))}
        return extras

    if vision == "resnet":
        width = draw(_RESNET_WIDTHS)
        vision_cfg = {"image_size": RESNET_DOWNSAMPLING * draw(st.integers(1, 3)), "layers": list(draw(_resnet_stages)),
                      "width": width, "head_width": width * RESNET_WIDENING // draw(st.sampled_from([1, 2, 4, 8])),
                      "patch_size": None}
    else:
        vision_cfg = {"image_size": patch * draw(st.integers(1, 4)), "layers": draw(st.integers(1, 2)),
                      "width": vision_width, "head_width": vision_width // draw(st.sampled_from([1, 2])),  # even
                      "patch_size": patch, **tower_extras()}
    text = {"context_length": draw(st.integers(8, 77)), "vocab_size": draw(vocab_sizes), "width": text_width,
            "heads": heads, "layers": draw(st.integers(1, 2)), **tower_extras()}
    quick = {"quick_gelu": True} if draw(st.booleans()) else {}
    return {"embed_dim": draw(st.sampled_from([32, 64, 96])), **quick, "vision_cfg": vision_cfg, "text_cfg": text}


# ---- checkpoints -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A random checkpoint as drawn: what `random_state_dict` and `write_checkpoint` make of it."""

    architecture: Architecture
    format: str
    dtype_mix: str
    seed: int

    def state_dict(self) -> dict:
        return random_state_dict(self.architecture, self.format, self.dtype_mix, self.seed)

    def write(self, path: Path | str) -> Path:
        return write_checkpoint(path, self.architecture, self.format, self.dtype_mix, self.seed)


@st.composite
def checkpoints(draw, family: str = "openai", formats: tuple[str, ...] = FORMATS,
                dtype_mixes: tuple[str, ...] = DTYPE_MIXES) -> Checkpoint:
    """Random checkpoints of a family's architectures, in any of `formats`, stored in any of `dtype_mixes`
    (an OpenAI-format checkpoint of the open_clip family is drawn only where OpenAI's code can build it)."""
    architecture = draw(architectures(family))
    usable = [name for name in formats if name != "openai" or not openai_config.incompatibilities(architecture)]
    if not usable:
        raise ValueError(f"no format of {formats} holds every architecture of the {family} family")
    return Checkpoint(architecture, draw(st.sampled_from(usable)), draw(st.sampled_from(dtype_mixes)),
                      draw(st.integers(0, 2**16)))


def random_state_dict(architecture: Architecture, format: str = "openai", dtype_mix: str = "float32",
                      seed: int = 0) -> dict:
    """The state dict, in `format`'s key names, of a model of `architecture` built by that format's own code
    with its own random init, stored in `dtype_mix`."""
    import torch

    from roundtrip.examples import random_open_clip_model, random_openai_model
    from roundtrip.references import with_stand_in

    whole = with_stand_in(architecture)  # a tower alone: cut out of a model of both, built by the format's code
    if format == "openai":
        state_dict = random_openai_model(whole, seed, openai_dtypes=False).state_dict()
    elif format == "open_clip":
        state_dict = random_open_clip_model(open_clip_config.model_config(whole), seed).state_dict()
    elif format == "hf":
        state_dict = _hf_model(architecture, seed).state_dict()
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format != "hf" and architecture.towers != TOWERS:
        projections = tuple(tower for tower in architecture.towers if getattr(architecture, tower).projected)
        state_dict = mapping.of_towers(state_dict, "openai", architecture.towers, projections)
    if dtype_mix == "openai":
        halved = _halved_by_openai(architecture, format)
        # transformers' classes of a tower without a projection name their keys without the tower's prefix
        prefix = HF_TOWER_PREFIXES[architecture.towers[0]] if architecture.towers != TOWERS else ""
        return {key: tensor.half() if halved[key if key in halved else prefix + key] else tensor
                for key, tensor in state_dict.items()}
    if dtype_mix not in DTYPE_MIXES:
        raise ValueError(f"dtype_mix must be one of {', '.join(DTYPE_MIXES)}, not {dtype_mix!r}")
    dtype = getattr(torch, dtype_mix)
    return {key: tensor.to(dtype) if tensor.is_floating_point() else tensor for key, tensor in state_dict.items()}


def _hf_model(architecture: Architecture, seed: int):
    """transformers' model of `architecture`: CLIPModel, or the class that holds a tower alone."""
    import torch
    import transformers

    model_class = getattr(transformers, hf_config.model_class(architecture))
    torch.manual_seed(seed)
    return model_class(model_class.config_class.from_dict(hf_config.config(architecture))).eval()


def _halved_by_openai(architecture: Architecture, format: str) -> dict[str, bool]:
    """Which tensors OpenAI's releases store in float16: what `clip.model.convert_weights` halves (linear, conv
    and attention layers, the projections), applied to open_clip's model of the architecture (the same
    modules, and any architecture), on the meta device, named in `format`'s layout by the schema."""
    import torch
    from open_clip.model import CLIP

    from roundtrip.references import openai_code, with_stand_in

    with torch.device("meta"):
        model = CLIP(**open_clip_config.model_config(with_stand_in(architecture)))
    openai_code("model").convert_weights(model)
    state_dict = mapping.convert(model.state_dict(), "openai", "hf" if format == "hf" else "openai")
    return {key: tensor.dtype == torch.float16 for key, tensor in state_dict.items()}


def write_checkpoint(path: Path | str, architecture: Architecture, format: str = "openai",
                     dtype_mix: str = "float32", seed: int = 0, prefixed: bool = False) -> Path:
    """Write a random checkpoint of `architecture` in `format` to `path`, as that format's own tools write
    one: a `torch.save` state dict (OpenAI), a `save_pretrained` folder (HF: CLIPModel, or the class of a
    tower alone), a hub folder (open_clip; of a tower alone, with the config clipconv writes for one).
    `prefixed`: an HF tower alone with every key under its tower's prefix, as the hub's folders hold them
    (transformers 5.25 saves the classes without a projection with none). Returns `path`."""
    import torch

    from roundtrip.examples import save_open_clip_folder

    path = Path(path)
    state_dict = random_state_dict(architecture, format, dtype_mix, seed)
    if format == "openai":
        torch.save(state_dict, path)
    elif format == "open_clip":
        save_open_clip_folder(state_dict, open_clip_config.model_config(architecture), path)
    else:
        model = _hf_model(architecture, seed)
        model.load_state_dict(state_dict, assign=True)
        model.save_pretrained(path)
        if prefixed and architecture.towers != TOWERS:
            _prefix_keys(path / HF_SAFETENSORS, HF_TOWER_PREFIXES[architecture.towers[0]])
    return path


def _prefix_keys(path: Path, prefix: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(path, "pt") as opened:
        metadata = opened.metadata()
    weights = load_file(path)
    if not any(key.startswith(prefix) for key in weights):  # the classes with a projection keep their prefix
        save_file({prefix + key: tensor for key, tensor in weights.items()}, path, metadata=metadata)


# ---- the assertion -----------------------------------------------------------------------------------------


def assert_equivalent(a: Path | str, b: Path | str, *, tolerance: float = TOLERANCE, weights_tolerance: float = 0.0,
                      logits: bool = True, open_clip_model_a: str | None = None,
                      open_clip_config_a: Path | str | None = None, openai_architecture_a: bool = False,
                      open_clip_model_b: str | None = None, open_clip_config_b: Path | str | None = None,
                      openai_architecture_b: bool = False, tower: str | None = None, encoder_a: str | None = None,
                      encoder_b: str | None = None) -> Report:
    """`clipconv compare A B` as an assertion: returns the report when A and B are the same model (weights
    equal after mapping, or within `weights_tolerance`; every output within `tolerance`), of `tower` alone if
    given (`encoder_a`, `encoder_b`: a text encoder of a diffusion model's single file); raises AssertionError
    carrying the report otherwise (or the one-line reason a side could not be read)."""
    options_a = SourceOptions.of(open_clip_model_a, open_clip_config_a, openai_architecture_a, encoder_a)
    options_b = SourceOptions.of(open_clip_model_b, open_clip_config_b, openai_architecture_b, encoder_b)
    try:
        report = compare(a, b, tolerance=tolerance, weights_tolerance=weights_tolerance, logits=logits,
                         options_a=options_a, options_b=options_b, tower=tower)
    except ClipconvError as error:
        raise AssertionError(str(error)) from None
    if not report.same:
        raise AssertionError(f"{a} and {b} are not the same model:\n{report.text()}")
    return report


# ---- the strategies clipconv's own suite uses --------------------------------------------------------------


# How the weights are stored: as OpenAI ships them (fp16 linear/conv/attention and projections, fp32 elsewhere)
# or all float32.
openai_dtypes = st.booleans()
seeds = st.integers(0, 2**16)

# Text for tokenizer properties: any character assigned in Python's Unicode database, and words with odd
# spacing and case. Characters unassigned there (category Cn) are left out: the `regex` module behind
# clip.tokenize carries newer Unicode tables than the tokenizers library, so the two split text with
# recently assigned characters differently (see tests/test_tokenizer_parity.DIVERGENT_RAW_TEXT).
_words = st.lists(st.sampled_from(["a", "Photo", "OF", "the", "cat's", "2024", "naïve", "😀", "&", "...", "x" * 40]))
texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=200),
    st.builds(lambda words, gap: gap.join(words), _words, st.sampled_from([" ", "  ", "\t", "\n", " \u00a0 "])),
)


@st.composite
def hf_configs(draw) -> tuple[Architecture, dict]:
    """An architecture and config.json as folders in the wild have it: this tool's full config for it, with
    any fields (or a whole tower) left out, and towers sometimes under the legacy `*_config_dict` keys."""
    architecture = draw(architectures())
    config = hf_config.config(architecture)
    if draw(st.booleans()):
        del config["projection_dim"]
    for tower in ("text_config", "vision_config"):
        fields = config.pop(tower)
        kept = {key: value for key, value in fields.items() if draw(st.booleans())}
        where = draw(st.sampled_from([tower, f"{tower}_dict", None]))
        if where:
            config[where] = kept
    return architecture, config


# What an output file is written in: chunks of any size, including empty ones and ones larger than a block.
byte_chunks = st.lists(st.one_of(
    st.binary(max_size=100),
    st.builds(lambda size, seed: random.Random(seed).randbytes(size), st.integers(0, 40_000), seeds),
), max_size=12)


@st.composite
def _cast_case(draw):
    """A tensor as the mapping hands it to a writer (any rank up to 4, sometimes a transposed view) and the
    DType to write it in."""
    import torch

    shape = draw(st.lists(st.integers(0, 9), max_size=4))
    source = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64]))
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(draw(seeds))).to(source)
    if len(shape) == 2 and draw(st.booleans()):
        tensor = tensor.t()  # OpenAI's projections, as HF stores them
    target = source if source == torch.int64 else draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return tensor, DTYPES[str(target).removeprefix("torch.")]


cast_cases = _cast_case()

# What a state dict file declares: key -> (dtype name, shape), any dtype torch.save writes, shapes of rank 0-3.
tensor_specs = st.dictionaries(
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12),
    st.tuples(st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 5), max_size=3).map(tuple)),
    min_size=1, max_size=8,
)


# ---- diffusion models' single files ------------------------------------------------------------------------

# What else a single file holds, standing in for the UNet, VAE and T5 (names as the real files have them; never
# read by a conversion of the text encoders, so a few tensors of each dtype the real ones use are enough).
_STAND_INS = {
    "model.diffusion_model.input_blocks.0.0.weight": ((8, 4, 3, 3), "float16"),
    "model.diffusion_model.out.2.bias": ((4,), "float32"),
    "first_stage_model.encoder.conv_in.weight": ((8, 3, 3, 3), "float32"),
    "first_stage_model.decoder.conv_out.bias": ((3,), "bfloat16"),
    "model_ema.decay": ((), "float32"),
}
_SD3_STAND_INS = {"text_encoders.t5xxl.transformer.shared.weight": ((16, 8), "float16")}


def single_file_tensors(family: str, layers: int | dict[str, int] = 2, dtype: str = "float16",
                        vocab_size: int = OPENAI_VOCAB_SIZE,
                        seed: int = 0, older_keys: bool = False, position_ids: bool = False,
                        width: int | None = None, logit_scale: bool = False) -> dict:
    """The tensors of a diffusion model's single-file checkpoint of `family` (as schema.SINGLE_FILE_LAYOUTS
    names them, or "standalone clip_l|clip_h|clip_g"): each text encoder at its real width (or `width`) with
    `layers` blocks (or `layers[name]`) and random weights in `dtype`, beside stand-ins for the rest.
    `older_keys`: HF-layout encoders without text_model. (older Stable Diffusion 1.x files); `position_ids`: with
    the int64 positions older files hold; `logit_scale`: an HF-layout encoder with one (as ComfyUI's CLIPSave
    writes standalone files)."""
    import torch

    from roundtrip.schema import HF_IGNORED_KEYS, LOGIT_SCALE, SINGLE_FILE_LAYOUTS, EmbeddedEncoder
    from roundtrip.single_file import ENCODER_MODELS

    if family.startswith("standalone "):
        name = family.removeprefix("standalone ")
        encoders = (EmbeddedEncoder(name, "", "hf", ENCODER_MODELS[name].component),)
    else:
        encoders = next(layout.encoders for layout in SINGLE_FILE_LAYOUTS if layout.family == family)
    generator = torch.Generator().manual_seed(seed)
    stand_ins = {} if encoders[0].prefix == "" else {
        **_STAND_INS, **(_SD3_STAND_INS if family == "Stable Diffusion 3" else {})}
    tensors = {key: torch.randn(shape, generator=generator).to(getattr(torch, kind))
               for key, (shape, kind) in stand_ins.items()}
    for index, encoder in enumerate(encoders):
        real_width = width or ENCODER_MODELS[encoder.name].width
        # SD 1.x's CLIP-L and SD3's have no projection; open_clip's towers and SD3's CLIP-G have one
        projected = encoder.layout == "openai" or encoder.name == "clip_g"
        tower = openai_config.from_clip_kwargs(embed_dim=real_width, image_resolution=16, vision_layers=1,
                                               vision_width=64, vision_patch_size=16, context_length=77,
                                               vocab_size=vocab_size, transformer_width=real_width,
                                               transformer_heads=real_width // HEAD_WIDTH,
                                               transformer_layers=layers if isinstance(layers, int) else
                                               layers[encoder.name]).alone("text", projected)
        weights = random_state_dict(tower, "openai", dtype, seed + index)
        if encoder.layout == "openai":
            weights[LOGIT_SCALE] = torch.tensor(4.6052, dtype=getattr(torch, dtype))
        else:
            weights = {key: tensor.contiguous() for key, tensor in
                       mapping.convert(weights, "openai", "hf", ("text",)).items()}
            if position_ids:
                weights[HF_IGNORED_KEYS[0]] = torch.arange(77).unsqueeze(0)
            if logit_scale:
                weights[LOGIT_SCALE] = torch.tensor(4.6055, dtype=getattr(torch, dtype))
            if older_keys:
                weights = mapping.without_prefix(weights, HF_TOWER_PREFIXES["text"])
        tensors.update(mapping.with_prefix(weights, encoder.prefix))
    return tensors


def write_single_file(path: Path | str, family: str, *, ckpt: bool = False, **options) -> Path:
    """Write `single_file_tensors(family, **options)` as a .safetensors file, or as a .ckpt
    (`torch.save({"state_dict": ...})`, as the original training code saved them). Returns `path`."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    tensors = single_file_tensors(family, **options)
    if ckpt:
        torch.save({"state_dict": tensors, "global_step": torch.tensor(1000)}, path)
    else:
        save_file(tensors, path)
    return path


@dataclass(frozen=True)
class SingleFile:
    """A diffusion model's single file as drawn: what `single_file_tensors` and `write_single_file` make of it."""

    family: str
    options: dict
    ckpt: bool  # a torch.save .ckpt ({"state_dict": ...}) rather than safetensors

    def write(self, folder: Path) -> Path:
        return write_single_file(Path(folder) / ("model.ckpt" if self.ckpt else "model.safetensors"), self.family,
                                 ckpt=self.ckpt, **self.options)


@st.composite
def single_files(draw) -> SingleFile:
    """Random single files of every family of schema.SINGLE_FILE_LAYOUTS and standalone encoder files: real
    widths, one to three blocks (two or more where diffusers leaves the last out), a small vocabulary, any
    float dtype, the older key style and stray position_ids where Stable Diffusion 1.x files have them,
    position_ids and logit_scale where standalone files have them."""
    from roundtrip.schema import SINGLE_FILE_LAYOUTS

    family = draw(st.sampled_from([layout.family for layout in SINGLE_FILE_LAYOUTS] +
                                  ["standalone clip_l", "standalone clip_g"]))
    options = {"layers": draw(st.integers(2 if family == "Stable Diffusion 2.x" else 1, 3)),
               "dtype": draw(st.sampled_from(["float16", "bfloat16", "float32"])),
               "vocab_size": draw(st.sampled_from([64, 1000])), "seed": draw(seeds)}
    if family == "Stable Diffusion 1.x":
        options.update(older_keys=draw(st.booleans()), position_ids=draw(st.booleans()))
    if family.startswith("standalone"):  # as ComfyUI's CLIPSave writes them, or SD3's own
        options.update(position_ids=draw(st.booleans()), logit_scale=draw(st.booleans()))
    return SingleFile(family, options, ckpt=not family.startswith("standalone") and draw(st.booleans()))
