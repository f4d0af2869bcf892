"""The ``facesynth`` command line. Thin: parse options, call the library, map errors to one line."""

from __future__ import annotations

import logging
import sys

import click

from ..errors import FacesynthError, visible
from ..recipe import PRESETS, SCHEDULER_NAMES

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what Slurm and Kubernetes send


class Terminated(BaseException):
    """SIGTERM, handled like Ctrl-C: the shard in progress is dropped, finished ones are kept.

    Not a KeyboardInterrupt, which click would turn into a plain ``Abort``.
    """


class _State:
    """Global flags, which may stand before or after the subcommand."""

    debug = False
    verbose = 0


def _message(exc: BaseException) -> tuple[str, int]:
    """The central map from exception to (one-line message, exit status)."""
    if isinstance(exc, FacesynthError):
        return str(exc), exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.format_message().replace("\n", " "), EXIT_USAGE
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM): finished shards are kept; run the same command again to resume", EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted: finished shards are kept; run the same command again to resume", EXIT_INTERRUPTED
    if isinstance(exc, PermissionError):
        return f"cannot write '{exc.filename}': permission denied", EXIT_USAGE
    if isinstance(exc, OSError) and exc.filename:
        return f"'{exc.filename}': {exc.strerror or exc}", EXIT_FAILURE
    from ..errors import first_line

    return f"unexpected {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)", EXIT_FAILURE


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


class FacesynthGroup(click.Group):
    """A group that reports every error as one line, with a traceback only under --debug."""

    def main(self, args=None, prog_name=None, **kwargs):  # type: ignore[override]
        import signal

        args = list(sys.argv[1:] if args is None else args)
        _State.debug, _State.verbose = False, 0
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:  # click's form of KeyboardInterrupt (Ctrl-C, SIGINT)
            self._fail(KeyboardInterrupt())
        except click.UsageError as exc:  # one line, then click's pointer to the help
            click.echo(f"Error: {visible(_message(exc)[0])}", err=True)
            if exc.ctx is not None:
                click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.", err=True)
            sys.exit(EXIT_USAGE)
        except BaseException as exc:  # noqa: BLE001 - this is the one place errors become messages
            if isinstance(exc, SystemExit):
                raise
            if _State.debug:
                raise
            self._fail(exc)
        finally:
            signal.signal(signal.SIGTERM, previous)
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _fail(exc: BaseException) -> None:
        message, code = _message(exc)
        click.echo(f"Error: {visible(message)}", err=True)  # a folder name's escape codes stay text
        sys.exit(code)


def _setup_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if not debug:
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        for name in ("transformers", "diffusers", "datasets", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _quiet(value: bool) -> bool:
    """``-q``: nothing but errors and the command's own result, from facesynth and the libraries under it."""
    if value and not _State.debug:
        import os
        import warnings

        warnings.filterwarnings("ignore")  # libraries' FutureWarnings and the like; errors still raise
        for name, setting in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                              ("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error")):
            os.environ[name] = setting  # read by each library when it is imported (they load lazily)
        logging.getLogger().setLevel(logging.ERROR)
        for module, call in (("huggingface_hub.utils", "disable_progress_bars"), ("datasets", "disable_progress_bars"),
                             ("transformers.utils.logging", "disable_progress_bar"),
                             ("diffusers.utils.logging", "disable_progress_bar")):
            if module in sys.modules:  # already imported: tell it now
                getattr(sys.modules[module], call)()
    return value


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _State.debug = True
        _setup_logging(_State.verbose, True)


def _set_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        _State.verbose += value
        _setup_logging(_State.verbose, _State.debug)


def global_options() -> list[click.Option]:
    """``--debug`` and ``-v``: accepted before the subcommand and after it."""
    return [
        click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                     help="Show tracebacks and debug logs."),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True, callback=_set_verbose,
                     help="More logging."),
    ]


class FacesynthCommand(click.Command):
    """Every subcommand also takes the global flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.extend(global_options())


FacesynthGroup.command_class = FacesynthCommand


class Location(click.ParamType):
    """A dataset folder, or an fsspec URL of a store (``s3://bucket/prefix``, kept as text: a Path would fold
    its ``//``). ``exists``: a folder must exist (a URL is checked when the store is opened)."""

    name = "DIR|URL"

    def __init__(self, exists: bool = False):
        self.exists = exists

    def convert(self, value, param, ctx):
        from pathlib import Path

        from ..folder.store import is_remote

        if isinstance(value, Path) or not is_remote(value):
            path = Path(value)
            if path.exists() and not path.is_dir():
                self.fail(f"Directory '{value}' is a file.", param, ctx)  # click.Path's words
            if self.exists and not path.exists():
                self.fail(f"Directory '{value}' does not exist.", param, ctx)
            return path
        return str(value)


def in_store(location, write: bool = False):
    """A context manager giving ``(folder, mirror)``: a local folder as it is (mirror None), or a store's dataset
    in a staging folder, written back when ``write`` and the command succeeds."""
    import contextlib

    if not isinstance(location, str):
        return contextlib.nullcontext((location, None))
    from ..folder.mirror import staged

    return staged(location, write)


class FiniteFloat(click.FloatRange):
    """A float range that also refuses NaN and infinity (which compare false with any bound)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def multiple_of_8(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value % 8:
        raise click.BadParameter(f"{value} is not a multiple of 8 (the VAE works on 8x8 pixel blocks).",
                                 ctx, param)
    return value


@click.group(cls=FacesynthGroup, context_settings={"help_option_names": ["-h", "--help"]},
             params=global_options())
@click.version_option(package_name="facesynth")
def main() -> None:
    """Build balanced, labelled, reproducible synthetic face datasets.

    \b
    Examples:
      facesynth plan emotions --num-samples 1000
      facesynth generate emotions --model tiny --num-samples 32 --out demo
      facesynth card demo
    """
    _setup_logging(_State.verbose, _State.debug)


def _options(*options):
    """One decorator for options that several commands share, so their names and help stay one."""
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


model_options = _options(
    click.option("--model", help="A Hub repo id, a local diffusers folder or a .safetensors file; tiny, tiny-sd3 "
                                 "and tiny-flux are random-weight test models."),
    click.option("--model-config", type=click.Path(exists=True, file_okay=False),
                 help="A local diffusers folder of configs for a single .safetensors --model, so it loads offline."),
    click.option("--revision", help="Hub branch, tag or commit of --model."),
    click.option("--clip-model",
                 help="CLIP for reranking (default: openai/clip-vit-base-patch32; tiny with --model tiny)."),
    click.option("--preset", type=click.Choice(list(PRESETS)),
                 help="A few-step model's scheduler, steps and guidance, as its card recommends (lcm: LCM-LoRA 4 "
                      "steps; tcd 4; lightning 4; turbo 1; hyper 8; schnell: FLUX.1 [schnell] 4); --scheduler, "
                      "--steps and --guidance override it."),
    click.option("--lora", multiple=True, metavar="SOURCE[@WEIGHT]",
                 help="A LoRA adapter fused into the model: a Hub repo (owner/name[/file.safetensors]) or a local "
                      ".safetensors file or folder, at WEIGHT (default 1); replaces the recipe's loras. Repeatable."),
)
device_options = _options(
    click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N, mps or cpu."),
    click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), help="Default: fp16 on CUDA, fp32 elsewhere."),
    click.option("--scheduler", type=click.Choice(SCHEDULER_NAMES), help="Override the recipe's scheduler."),
    click.option("--steps", type=click.IntRange(1, 1000), help="Override the recipe's steps."),
)
quiet_option = click.option("--quiet", "-q", is_flag=True, is_eager=True,
                            callback=lambda ctx, param, value: _quiet(value),
                            help="Print nothing but errors and the result: no progress bars, no library warnings.")
speed_options = _options(
    click.option("--prune-at", type=FiniteFloat(0, 1, min_open=True, max_open=True),
                 help="Opt-in: after this fraction of the steps, score every candidate's predicted image and "
                      "finish only the best --keep (fewer UNet evaluations; see the README)."),
    click.option("--keep", type=click.IntRange(1), help="Candidates per sample kept past --prune-at."),
    click.option("--cfg-until", type=FiniteFloat(0, 1, min_open=True, max_open=True),
                 help="Opt-in: after this fraction of the steps, run only the conditional branch "
                      "(half the UNet batch)."),
)
