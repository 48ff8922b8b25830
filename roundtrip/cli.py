"""The `clipconv` command line: argument parsing, progress and summaries only."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from roundtrip import __version__, process
from roundtrip.casting import DTYPE_CHOICES
from roundtrip.facts import HF_SHARD_PATTERN
from roundtrip.schema import ENCODER_NAMES, TOWERS

# Per target format: its command, what it does, examples; the options are the same for every command.
COMMANDS = {
    "hf": ("to-hf", "Convert SOURCE into a Hugging Face CLIPModel folder DEST.", """
    DEST gets config.json and model.safetensors (or shards with an index above
    --max-shard-size), a preprocessor_config.json, a model card (README.md) and
    OpenAI's tokenizer where it fits the model (OpenAI's 49408 tokens, and no
    other tokenizer named by an open_clip config; else the summary says why it
    was left out), so CLIPProcessor and pipeline() load it directly.""", """
  clipconv to-hf ViT-B-32.pt clip-vit-base-patch32
  clipconv to-hf laion-ViT-H-14/ ViT-H-14-hf
  clipconv to-hf epoch_32.pt out --open-clip-model ViT-B-16-quickgelu
  clipconv to-hf ViT-L-14.pt big --max-shard-size 500MB --no-verify
  clipconv to-hf ViT-B-32.pt vit-b-32-metaclip2 --metaclip-2   # as MetaClip2Model
  clipconv to-hf my-hf-finetune my-hf-finetune-fp16 --dtype float16"""),
    "openai": ("to-openai", "Convert SOURCE into an OpenAI CLIP state-dict file DEST.", """
    DEST is one .pt file that clip.load(DEST, jit=False) and
    clip.model.build_model accept (a DEST ending in .safetensors gets the same
    state dict as safetensors). Models OpenAI's code cannot build (gelu, heads
    other than width // 64, another MLP width or LayerNorm eps) are refused
    with every difference listed.""", """
  clipconv to-openai clip-vit-base-patch32 ViT-B-32.pt
  clipconv to-openai my-hf-finetune finetuned.pt --dtype float16
  clipconv to-openai ViT-B-32.pt plain.pt   # TorchScript archive -> state dict
  python -c 'import clip; clip.load("finetuned.pt", device="cpu", jit=False)'"""),
    "open_clip": ("to-open-clip", "Convert SOURCE into an open_clip model folder DEST.", """
    DEST gets open_clip_config.json and open_clip_model.safetensors, which
    open_clip.create_model_and_transforms("local-dir:DEST") loads.""", """
  clipconv to-open-clip clip-vit-base-patch32 ViT-B-32-open-clip
  clipconv to-open-clip ViT-B-32.pt ViT-B-32-open-clip
  clipconv to-open-clip epoch_3.pt run-3 --open-clip-config model_cfg.json
  clipconv to-open-clip RN50.pt RN50-open-clip   # ResNet CLIPs too (to-hf refuses them)
  python -c 'import open_clip; open_clip.create_model_and_transforms("local-dir:ViT-B-32-open-clip")'"""),
}
OFFLINE_HELP = ("Read a SOURCE given by its Hugging Face repository name (ORG/NAME, ORG/NAME@REVISION, "
                "hf-hub:ORG/NAME) from the local cache only, never downloading (as HF_HUB_OFFLINE=1 does).")
SOURCES = """
    SOURCE is any checkpoint clipconv reads: an OpenAI TorchScript archive or
    torch.save state dict, a Hugging Face CLIPModel folder, an open_clip folder
    (open_clip_config.json beside its weights), or an open_clip checkpoint file
    (a state dict, or a training run's epoch_N.pt) with --open-clip-model NAME
    or --open-clip-config FILE, unless an open_clip_config.json lies beside it;
    or one tower of any of these (a CLIPTextModel or CLIPVisionModel folder, a
    text encoder's state dict); --tower text|vision converts that tower alone.
    An open_clip model's activation and heads are not in its tensors: they are
    never guessed. A file that looks like a training run's ({"state_dict": ...},
    "module." prefixes) is read as OpenAI's only with --openai-architecture.
    A source already in DEST's format is written in that format's own form,
    with its dtypes, key order and config unless asked otherwise; where that
    would store exactly what SOURCE stores, nothing is written. SOURCE may be
    a Hugging Face repository name (openai/clip-vit-base-patch32, ORG/NAME@REV,
    hf-hub:ORG/NAME): read from the local cache, downloaded if missing unless
    --offline or HF_HUB_OFFLINE=1; a path that exists always wins.

    DEST must not exist, or with --overwrite be this command's own earlier
    output; it is never SOURCE, inside it, or a folder holding it. Unless
    --no-verify is given, the source's own model code and the target's run the
    converted weights, and every layer's output, the pooled and projected
    embeddings and the logits must agree within 1e-3; otherwise nothing is
    written. Ctrl-C, SIGTERM or SIGHUP stop it leaving
    nothing behind (exit 130, 143, 129)."""


class ByteSize(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        from roundtrip.writers import byte_size

        try:
            return byte_size(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipconv")
@click.option("--debug", is_flag=True, help="Show a traceback when something fails (also after the command).")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Convert CLIP checkpoints between OpenAI's, Hugging Face's and open_clip's formats, exactly.

    \b
    to-hf         any source -> Hugging Face CLIPModel folder
    to-openai     any source -> OpenAI state dict that clip.load accepts
    to-open-clip  any source -> open_clip folder (open_clip_config.json + weights)
    compare       are two checkpoints, in any formats, the same model?

    Every direction comes from one schema; a round trip gives back every tensor
    bit for bit. After converting, the outputs of the source's model code and the
    target's are compared layer by layer (max |diff| <= 1e-3) unless --no-verify
    is given.
    """
    ctx.obj = {"debug": debug}


def _command(name: str, command_name: str, summary: str, details: str, examples: str, shards: bool):
    """The `clipconv to-...` command that converts into format `name`."""

    def command(ctx, source: Path, dest: str, debug: bool, max_shard_size: int | None = None,
                metaclip_2: bool = False, **options):
        from roundtrip.pipeline import convert

        if options["without_projection"] and options["tower"] is None:
            raise click.UsageError("--without-projection leaves a tower's projection out: give --tower text or "
                                   "--tower vision too", ctx)

        def run(report, progress):
            return convert(source, dest, name, dtype=options["dtype"], verify_logits=not options["no_verify"],
                           overwrite=options["overwrite"], open_clip_model=options["open_clip_model"],
                           open_clip_config=options["open_clip_config"],
                           openai_architecture=options["openai_architecture"], tower=options["tower"],
                           without_projection=options["without_projection"], encoder=options["encoder"],
                           metaclip_2=metaclip_2, offline=options["offline"], subfolder=options["subfolder"],
                           report=report, progress=progress,
                           **({"max_shard_bytes": max_shard_size} if max_shard_size is not None else {}))

        _print_summary(_run(ctx, run, debug))

    command.__doc__ = f"{summary}\n{SOURCES}\n{details}"
    decorators = [
        click.argument("source", type=click.Path(path_type=Path)),
        click.argument("dest", type=click.Path()),  # as typed: a trailing separator means a folder
        click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="restore", show_default=True,
                     help="'restore': the dtypes an earlier conversion recorded for this format, else "
                          "the format's own (float32 for HF and open_clip, the source's for OpenAI); 'keep': the "
                          "source's dtypes; or one dtype for every floating tensor."),
        *([click.option("--max-shard-size", type=ByteSize(), default="5GB", show_default=True,
                        help="Split model.safetensors into shards (with an index) above this size."),
           click.option("--metaclip-2", is_flag=True,
                        help="Write transformers' MetaClip2 classes (MetaClip2Model, MetaClip2TextModel...) where "
                             "CLIP's would do; MetaCLIP 2 worldwide models, which pool text at token 2, get them "
                             "anyway.")] if shards else []),
        click.option("--open-clip-model", metavar="NAME",
                     help="The open_clip model SOURCE (a checkpoint file) is, by its name in open_clip's registry "
                          "(e.g. ViT-H-14, ViT-B-16-quickgelu)."),
        click.option("--open-clip-config", type=click.Path(path_type=Path), metavar="FILE",
                     help="The open_clip model SOURCE (a checkpoint file) is, as a model config JSON or an "
                          "open_clip_config.json."),
        click.option("--openai-architecture", is_flag=True,
                     help="SOURCE (a checkpoint file) is OpenAI's architecture (QuickGELU, heads of 64), though it "
                          "looks like a training run's."),
        click.option("--tower", type=click.Choice(TOWERS),
                     help="Convert this tower alone, from a model of both or of that one (to-hf: a CLIPTextModel"
                          "WithProjection or CLIPVisionModelWithProjection folder, or the class without a "
                          "projection for a tower that has none)."),
        click.option("--without-projection", is_flag=True,
                     help="With --tower: leave the tower's projection out (Stable Diffusion 1's text encoder is a "
                          "CLIPTextModel, which has none)."),
        click.option("--encoder", type=click.Choice(ENCODER_NAMES),
                     help="The text encoder to take out of a diffusion model's single-file checkpoint (Stable "
                          "Diffusion 1.x/2.x/XL/3): clip_l (OpenAI's ViT-L/14), clip_h (ViT-H-14), clip_g "
                          "(ViT-bigG-14); needed where it holds more than one."),
        click.option("--overwrite", is_flag=True, help="Replace DEST if clipconv wrote it with this command "
                     "(only once the new one is complete)."),
        click.option("--no-verify", is_flag=True, help="Skip the check of every layer's output and the logits, "
                     "and the read-back of the written bytes (faster: no model is built, torch is not even "
                     "imported)."),
        click.option("--subfolder", metavar="PATH", help="The model folder inside SOURCE (a repository name or a "
                     "folder) to read, such as text_encoder_2 of a diffusers repository."),
        click.option("--offline", is_flag=True, help=OFFLINE_HELP),
        click.option("--debug", is_flag=True, help="Show a traceback when something fails."),
        click.pass_context,
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return main.command(command_name, epilog=f"\b\nExamples:{examples}")(command)


for _name, _help in COMMANDS.items():
    _command(_name, *_help, shards=_name == "hf")


DIFFUSERS_EXAMPLES = """
  clipconv to-diffusers sd_xl_base_1.0.safetensors sdxl-text-encoders
  clipconv to-diffusers v1-5-pruned-emaonly.ckpt sd15-text-encoder --dtype float32
  clipconv to-diffusers clip_g.safetensors clip-g-diffusers
  python -c 'from transformers import CLIPTextModelWithProjection as M
  M.from_pretrained("sdxl-text-encoders", subfolder="text_encoder_2")'"""


@main.command("to-diffusers", epilog=f"\b\nExamples:{DIFFUSERS_EXAMPLES}",
              short_help="A diffusion model's CLIP text encoders as diffusers components.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path())
@click.option("--dtype", type=click.Choice(["keep", *[choice for choice in DTYPE_CHOICES if choice not in
                                                      ("keep", "restore")]]),
              default="keep", show_default=True, help="'keep': the file's dtypes, as diffusers keeps them; or one "
                                                       "dtype for every floating tensor.")
@click.option("--overwrite", is_flag=True, help="Replace DEST if clipconv wrote it with this command (only once the "
                                                "new one is complete).")
@click.option("--no-verify", is_flag=True, help="Skip the check of every layer's output (no model is built).")
@click.option("--offline", is_flag=True, help=OFFLINE_HELP)
@click.option("--debug", is_flag=True, help="Show a traceback when something fails.")
@click.pass_context
def diffusers_command(ctx, source: Path, dest: str, dtype: str, overwrite: bool, no_verify: bool, offline: bool,
                      debug: bool):
    """Write the CLIP text encoders of a diffusion model's single file SOURCE as diffusers components in DEST.

    \b
    SOURCE is a Stable Diffusion 1.x, 2.x, XL, XL refiner or 3 single-file
    checkpoint (.safetensors, or .ckpt/.pt read without running anything in
    it), or a text encoder in a file of its own (clip_l, clip_g, clip_h as
    ComfyUI keeps them). Only the encoders' tensors are read.

    \b
    DEST gets one folder per encoder, named as that model's diffusers pipeline
    names it: text_encoder/ (CLIPTextModel, or CLIPTextModelWithProjection for
    SD3) with tokenizer/, and text_encoder_2/ (CLIPTextModelWithProjection)
    with tokenizer_2/. Each holds what diffusers' own single-file loading
    builds: Stable Diffusion 2.x's text_encoder/ the blocks the model reads
    (all but the last, without the projection and logit_scale), SD3's CLIP-L
    the identity projection its pipeline implies; the summary names what is
    left out or added. Tokenizers pad as the model's code does: with
    end-of-text for CLIP-L, with "!" (id 0) for open_clip's H and bigG.

    \b
    Unless --no-verify is given, the source's own model code (open_clip's for
    2.x's and XL's open_clip encoders, transformers' for the rest) and
    transformers' class of each component run the weights, and every layer's
    output and the pooled (and projected) embedding must agree within 1e-3;
    otherwise nothing is written. DEST must not exist, or with --overwrite be
    this command's own earlier output.
    """
    from roundtrip.pipeline import convert_to_diffusers

    def run(report, progress):
        return convert_to_diffusers(source, dest, dtype=dtype, verify_logits=not no_verify, overwrite=overwrite,
                                    offline=offline, report=report, progress=progress)

    for summary in _run(ctx, run, debug):
        _print_summary(summary)


SINGLE_FILE_EXAMPLES = """
  clipconv to-diffusers sd_xl_base_1.0.safetensors encoders
  ... fine-tune encoders/text_encoder_2 with diffusers or transformers ...
  clipconv to-single-file encoders sdxl-finetuned.safetensors --base sd_xl_base_1.0.safetensors
  clipconv to-single-file encoders/text_encoder_2 out.safetensors --base sd_xl_base_1.0.safetensors
  clipconv to-single-file sd3-encoders/text_encoder clip_l.safetensors"""


@main.command("to-single-file", epilog=f"\b\nExamples:{SINGLE_FILE_EXAMPLES}",
              short_help="Put diffusers text encoders back into a copy of a single-file checkpoint.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path())
@click.option("--base", type=click.Path(path_type=Path), metavar="FILE",
              help="The single-file checkpoint to copy, whose text encoders SOURCE's replace; without it, "
                   "SOURCE's one encoder is written as a standalone encoder file (ComfyUI's layout).")
@click.option("--overwrite", is_flag=True, help="Replace DEST if clipconv wrote it with this command (only once the "
                                                "new one is complete).")
@click.option("--no-verify", is_flag=True, help="Skip the check of every layer's output and the read-back of the "
                                                "written bytes.")
@click.option("--offline", is_flag=True, help=OFFLINE_HELP)
@click.option("--debug", is_flag=True, help="Show a traceback when something fails.")
@click.pass_context
def single_file_command(ctx, source: Path, dest: str, base: Path, overwrite: bool, no_verify: bool, offline: bool,
                        debug: bool):
    """Put the text encoders of a folder of diffusers components SOURCE back into a copy of the single file BASE,
    written as DEST (safetensors), or write SOURCE's one encoder as a standalone encoder file.

    \b
    SOURCE is a folder as to-diffusers writes it (text_encoder/,
    text_encoder_2/, ...), a diffusers pipeline folder, or one component's
    folder (named text_encoder or text_encoder_2). Each component replaces the
    encoder of BASE that its pipeline keeps there, in BASE's layout, key names
    and dtypes (q/k/v fused again, projections transposed back); an encoder
    SOURCE has no folder for stays as BASE has it. What a component has no
    place for is kept from BASE (Stable Diffusion 2.x's last block, projection
    and logit_scale; XL's logit_scale). Every other tensor of BASE is copied
    byte for byte, in BASE's order, with its metadata. A component that is not
    BASE's encoder (another width, layer count or activation) is refused.

    \b
    Unless --no-verify is given, transformers runs each component and BASE's
    model code (open_clip's or transformers') runs it as written, and every
    layer's output and the pooled (and projected) embedding must agree within
    1e-3; otherwise nothing is written.

    \b
    Without --base, SOURCE's one text encoder is written as a file of its own
    in ComfyUI's layout (transformers' keys, no prefix), as ComfyUI's
    models/text_encoders and SD3's text_encoders/clip_l.safetensors hold one.
    """
    from roundtrip.pipeline import convert_to_single_file

    def run(report, progress):
        return convert_to_single_file(source, dest, base, verify_logits=not no_verify, overwrite=overwrite,
                                      offline=offline, report=report, progress=progress)

    _print_summary(_run(ctx, run, debug))


COMPARE_EXAMPLES = """
  clipconv compare ViT-B-32.pt ViT-B-32-hf
  clipconv compare laion-ViT-H-14/ my-port-hf --json > report.json
  clipconv compare epoch_32.pt epoch_33.pt --open-clip-model-a ViT-B-16 --open-clip-model-b ViT-B-16 \\
      --no-logits --weights-tolerance 1e-2
  clipconv compare sd-repo/image_encoder laion-ViT-H-14/ --tower vision
  clipconv compare sd_xl_base_1.0.safetensors sdxl/text_encoder_2 --encoder-a clip_g"""


def _side_options(function):
    for side in ("b", "a"):
        function = click.option(f"--encoder-{side}", type=click.Choice(ENCODER_NAMES),
                                help=f"The text encoder of {side.upper()} (a diffusion model's single file) to "
                                     "compare.")(function)
        function = click.option(f"--openai-architecture-{side}", is_flag=True,
                                help=f"{side.upper()} (a checkpoint file) is OpenAI's architecture (QuickGELU, heads "
                                     "of 64).")(function)
        function = click.option(f"--open-clip-config-{side}", type=click.Path(path_type=Path), metavar="FILE",
                                help=f"The open_clip model {side.upper()} (a checkpoint file) is, as a "
                                     "config.")(function)
        function = click.option(f"--open-clip-model-{side}", metavar="NAME",
                                help=f"The open_clip model {side.upper()} (a checkpoint file) is, by its registry "
                                     "name.")(function)
    return function


@main.command("compare", epilog=f"\b\nExamples:{COMPARE_EXAMPLES}",
              short_help="Are A and B the same model? Exit 0 if so, 1 if not.")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Largest |difference| of any output (a layer's, an embedding, the logits) for the same model.")
@click.option("--weights-tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Largest |difference| of a weight for the same model (0: every value equal, bit for bit).")
@click.option("--no-logits", is_flag=True, help="Compare configs and tensors only: no model is built.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as one JSON object.")
@click.option("--tower", type=click.Choice(TOWERS),
              help="Compare this tower alone (its weights and every layer's output), of models of any kinds: "
                   "a whole model's against a tower alone, say.")
@_side_options
@click.option("--offline", is_flag=True, help=OFFLINE_HELP)
@click.option("--debug", is_flag=True, help="Show a traceback when something fails.")
@click.pass_context
def compare_command(ctx, a: Path, b: Path, tolerance: float, weights_tolerance: float, no_logits: bool,
                    as_json: bool, tower: str | None, offline: bool, debug: bool, **sides):
    """Are A and B the same model? Exit 0 if so, 1 if not (or one cannot be read), 2 on usage errors.

    A and B are any checkpoints clipconv reads, in any combination of formats. Both are mapped into A's key
    layout and compared: each side's architecture (widths, layers, heads, MLP width, activation, LayerNorm
    eps, patch, resolution, context, vocab, text pooling); each tensor (missing or extra, shape, dtype, and
    values bit for bit in the wider dtype, else the largest |difference|); and what each side's own model code
    computes on the same tokens and images: every layer's output, the embeddings and the logits. A dtype that
    differs while every value is equal is reported, not failed. --tower compares one tower of each.

    \b
    A diffusion model's single file A against a folder B of its diffusers
    components (as to-diffusers writes them, or a pipeline's folder): each
    text encoder against its component, as diffusers keeps it, one report per
    encoder (--encoder-a compares one, against a component's folder as B).
    """
    from roundtrip import diffusers_folder, hub
    from roundtrip.compare import compare, compare_encoders
    from roundtrip.formats import SourceOptions

    options = {side: SourceOptions(sides[f"open_clip_model_{side}"], sides[f"open_clip_config_{side}"],
                                   sides[f"openai_architecture_{side}"], sides[f"encoder_{side}"])
               for side in ("a", "b")}

    def run(report, progress):
        path_a, path_b = hub.resolve(a, offline).path, hub.resolve(b, offline).path
        if tower is None and options["a"] == SourceOptions() == options["b"] and path_a.is_file() and \
                diffusers_folder.is_components_folder(path_b):
            return compare_encoders(a, b, tolerance=tolerance, weights_tolerance=weights_tolerance,
                                    logits=not no_logits, offline=offline)
        return {None: compare(a, b, tolerance=tolerance, weights_tolerance=weights_tolerance, logits=not no_logits,
                              options_a=options["a"], options_b=options["b"], tower=tower, offline=offline)}

    def error_as_json(message: str) -> None:  # CI reads stdout: one JSON object whatever happens
        click.echo(json.dumps({"verdict": "error", "same": False, "error": message}))

    results = _run(ctx, run, debug, error_as_json if as_json else None)
    if None in results:  # not one report per encoder
        (result,) = results.values()
        click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.text())
    elif as_json:
        same = all(result.same for result in results.values())
        click.echo(json.dumps({"verdict": "same" if same else "different", "same": same,
                               "encoders": {name: result.to_json() for name, result in results.items()}}, indent=2))
    else:
        click.echo("\n\n".join(f"encoder       {name}\n{result.text()}" for name, result in results.items()))
    if not all(result.same for result in results.values()):
        ctx.exit(1)


class _WriteProgress:
    """A progress bar over bytes written, opened when the total is first known."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return  # the step messages suffice in logs
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="  bytes", file=sys.stderr, show_eta=False)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _run(ctx: click.Context, run, debug: bool, on_error=None):
    """`run(report, progress)`'s result; its failures as one line (a traceback with --debug) and exit code 1,
    after `on_error(message)` if given."""
    from roundtrip.errors import ClipconvError, Interrupted

    ctx.obj["debug"] = ctx.obj.get("debug") or debug  # --debug before or after the command
    progress = _WriteProgress()

    def report(message: str) -> None:
        progress.close()
        click.echo(f"{message} ...", err=True)

    try:
        with process.stopped_by_signals():
            summary = run(report, progress)
    except Interrupted as stop:  # what was being written is gone already
        _fail(ctx, f"stopped by {stop.name}; anything unfinished was removed", on_error, stop.exit_code)
    except ClipconvError as error:
        _fail(ctx, error.message(_option_spelling), on_error)
    except OSError as error:
        _fail(ctx, f"{error.filename or ''}: {error.strerror or error}".lstrip(": "), on_error)
    except Exception as error:  # noqa: BLE001 - a bug: still one line unless --debug
        _fail(ctx, f"internal error: {type(error).__name__}: {error} (rerun with --debug for a traceback)", on_error)
    finally:
        progress.close()
    return summary


def _option_spelling(parameter: str, value: str | None = None) -> str:
    return "--" + parameter.replace("_", "-") + (f" {value}" if value else "")


def _fail(ctx: click.Context, message: str, on_error=None, code: int = 1) -> None:
    if on_error:
        on_error(message)
    if ctx.obj.get("debug"):
        traceback.print_exc()
    click.echo(f"clipconv: error: {message}", err=True)
    ctx.exit(code)


def _print_summary(summary) -> None:
    if summary.unchanged_source is not None:
        click.echo(f"Nothing to change: {summary.unchanged_source} already is what {summary.dest} would hold "
                   f"({summary.target}: the same files, tensors, dtypes and config); nothing written")
        return
    dtypes = ", ".join(f"{name}: {count}" for name, count in summary.dtypes.items())
    click.echo(f"Wrote {summary.dest} ({summary.target})")
    click.echo(f"  tensors       {summary.tensors} ({dtypes}) in {_files(summary.files)}")
    if summary.extra_files:
        click.echo(f"  also          {', '.join(summary.extra_files)}")
    click.echo(f"  architecture  {summary.architecture.describe()}")
    if summary.agreement is None:
        click.echo("  verification  skipped (--no-verify)")
    else:
        where, largest = summary.agreement.largest
        at = f" at {where}" if largest else ""  # equal everywhere: nowhere to name
        click.echo(f"  verification  max |difference| = {largest:.2e}{at}, over "
                   f"{summary.agreement.scope()} (tolerance 1e-3)")
    for note in summary.notes:
        click.echo(f"  note          {note}")


def _files(names: list[str]) -> str:
    """File names for the summary, shards as a range: a 5 GB model split at 50 MB has a hundred."""
    shards = [name for name in names if HF_SHARD_PATTERN.fullmatch(name)]
    if len(shards) < 3:
        return ", ".join(names)
    others = [name for name in names if name not in shards]
    return f"{shards[0]} ... {shards[-1]} ({len(shards)} shards), " + ", ".join(others)


def run() -> None:
    """The installed `clipconv` command: `main` in the process settings of `roundtrip.process`, then an exit that
    skips the interpreter's teardown."""
    process.tune()
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code or 0
    process.exit_without_teardown(code)


if __name__ == "__main__":
    run()
