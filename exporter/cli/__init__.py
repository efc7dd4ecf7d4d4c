"""`edgex` command line. Exit codes: 0 ok, 1 budget or quality gate missed, 2 bad input, 3 internal error.

stdout carries results (JSON with --json, errors too); progress and logs go to stderr.
One module per command family (build, catalog, model, release); this one is the group they join.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from exporter import __version__, log
from exporter.cli import build, catalog, llm, model, release
from exporter.cli.common import fail


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgex")
@click.option("-v", "--verbose", count=True, help="More logs on stderr (-v: tracebacks on internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option(
    "--profiles-dir",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra folder of device profile YAMLs (also EDGEX_PROFILES, os.pathsep-separated).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, profiles_dir: tuple[Path, ...]) -> None:
    """edgex: turn a PyTorch or ONNX model into per-device INT8 artifacts, benchmarked against budgets.

    \b
    Examples:
      edgex build examples/digits.yaml
      edgex build examples/digits.yaml --profile raspberry-pi-5-cpu --out build/pi --json
      edgex profiles list
      edgex bench model.onnx --profile sa8295p-qnn
      edgex inspect build/digits/sa8295p-qnn/int8.onnx
      edgex verify build/digits
    """
    log.set_verbosity(0 if quiet else 1 + verbose)
    ctx.obj = {"profiles_dirs": profiles_dir}


for _family in (build, catalog, model, release, llm):
    for _command in _family.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click's own usage errors get the same exit code and JSON shape as ours."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="edgex", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        fail("interrupted", 130, "--json" in args, "KeyboardInterrupt")
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path if ctx else 'edgex'} --help`)"
        fail(f"{exc.format_message()}{hint}", exc.exit_code, "--json" in args, "UsageError")
    sys.exit(0)
