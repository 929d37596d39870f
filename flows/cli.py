"""The ``layerdrift`` command line: run the pipeline, rebuild or show its report, compare runs.

The environment is configured before Prefect is imported, so a user needs no Prefect setup:
the commands below import the flow lazily.

Exit codes: 0 done; 1 an unexpected failure (with its traceback), a damaged run found by
``verify``, or a lost Prefect server; 2 a usage error or a bad input (one line naming it,
nothing written), or a run held by another live process; 130 / 143 stopped by SIGINT /
SIGTERM (the next run resumes).
"""

from __future__ import annotations

import logging
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from layerdrift import __version__
from layerdrift.env import configure_environment

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="How fine-tuning changes a transformer, layer by layer.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Wide enough for the per-layer table when output goes to a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)


class UserError(Exception):
    """An error caused by the user's input: reported in one line, exit status 2."""


# Errors caused by the user's input, by module: each is reported in one line, exit status 2.
USER_ERRORS = (
    ("pydantic", "ValidationError"),
    ("layerdrift.storage.rundir", "RunConfigMismatchError"),
    ("layerdrift.storage.rundir", "RunLockedError"),
    ("layerdrift.tasks.data.sources", "DatasetError"),
    ("layerdrift.tasks.imports.sources", "CheckpointImportError"),
    ("layerdrift.tasks.modeling", "ModelNotFoundError"),
    ("layerdrift.tasks.preflight", "PreflightError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes; only those of modules already imported (which alone could
    have raised one), so that classifying an error never imports torch."""
    loaded = [getattr(sys.modules[m], name) for m, name in USER_ERRORS if m in sys.modules]
    return (UserError, FileNotFoundError, *loaded)


def _one_line(error: BaseException) -> str:
    """The error as one line; a pydantic error lists each field as ``section.field: why``."""
    if type(error).__name__ == "ValidationError" and hasattr(error, "errors"):
        parts = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            reason = item["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {reason}" if where else reason)
        text = "invalid configuration: " + "; ".join(parts)
    else:
        text = str(error)
    return " ".join(text.split())


def _version(value: bool) -> None:
    if value:
        console.print(f"layerdrift {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """How fine-tuning changes a transformer, layer by layer."""


@app.command()
def run(
    config_file: Annotated[
        Path | None, typer.Argument(help="A TOML file overriding any config field.")
    ] = None,
    preset: Annotated[str, typer.Option(help="quick, default, paper or study.")] = "default",
    model: Annotated[str | None, typer.Option(help="minilm-l6, a HF name or a folder.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="rotten-tomatoes, bbc-news, csv:PATH, hf:NAME[:CONFIG].")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under runs root).")] = None,
    runs_root: Annotated[str | None, typer.Option(help="Local folder or fsspec URL.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786.")
    ] = None,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(
            help="LABEL=PATH_OR_NAME, repeatable: analyse these checkpoints (no fine-tuning); "
            "`base` (the reference) first, --model when not given."
        ),
    ] = None,
    checkpoints_from: Annotated[
        str | None,
        typer.Option(help="A Hugging Face Trainer output folder: its checkpoint-N/ in order."),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Fine-tuning method: full (every weight) or lora.")
    ] = None,
) -> None:
    """Run the whole pipeline; the same command again resumes and redoes nothing finished."""
    from layerdrift.config import build_config

    overrides = {
        "model": model,
        "name": name,
        "runs_root": runs_root,
        "device": device,
        "dask_address": dask_address,
        "data": {"dataset": dataset} if dataset else None,
        "checkpoints": _checkpoint_options(checkpoint or []),
        "checkpoints_from": checkpoints_from,
        "finetune": {"method": method} if method else None,
    }
    try:
        config = build_config(preset, config_file, overrides)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"config file {config_file} is not valid TOML: {error}") from error
    from layerdrift.flows.interrupts import run_in_worker
    from layerdrift.storage import RunDir
    from layerdrift.storage.lock import holding
    from layerdrift.tasks.preflight import preflight

    preflight(config)  # before Prefect starts: a bad input costs seconds, and writes nothing
    with holding(RunDir(config.run_url).lock()):  # a second live run stops here
        from layerdrift.flows.pipeline import pipeline

        outcome = run_in_worker(pipeline, config)
    console.print(f"[bold]run directory[/bold] {outcome['run_dir']}")
    stages = ", ".join(f"{k}={v}" for k, v in outcome["stages"].items())
    console.print(f"[bold]stages[/bold] {stages}")
    if times := outcome.get("stage_seconds"):
        console.print("[bold]seconds[/bold] " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    _print_layer_table(outcome["run_dir"])
    if outcome.get("report"):
        console.print(f"[bold green]report[/bold green] {outcome['report']}")


@app.command()
def report(run_dir: Annotated[str, typer.Argument(help="A run directory or URL.")]) -> None:
    """Rebuild the figures and report.html from the stores, recomputing nothing."""
    run = _existing_run(run_dir)  # before the report's imports, which take seconds
    from layerdrift.storage import RunDir
    from layerdrift.tasks.report import build_report

    path = build_report(RunDir(run))
    console.print(f"[bold green]report[/bold green] {path}")


@app.command()
def show(
    run_dir: Annotated[str, typer.Argument(help="A run directory or URL.")],
    table: Annotated[
        str, typer.Option(help="layers (every per-layer column) or features (the README's).")
    ] = "layers",
    group: Annotated[
        str | None, typer.Option(help="Show this results.zarr group instead of a table.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, markdown or json.")] = "table",
) -> None:
    """Print the per-layer table of a run, its feature table, or any results group."""
    run_dir = _existing_run(run_dir)  # before the report's imports, which take seconds
    from layerdrift.storage import RunDir
    from layerdrift.tasks.report import tables

    if fmt not in tables.FORMATS:
        raise UserError(f"unknown --format {fmt!r}: use one of {', '.join(tables.FORMATS)}")
    if table not in tables.TABLES:
        raise UserError(f"unknown --table {table!r}: use one of {', '.join(tables.TABLES)}")
    run = RunDir(run_dir)
    if group is not None:
        _print_frame(tables.group_table(run, group), f"results group {group}", fmt)
    else:
        _print_frame(tables.layer_table(run, table), "final vs base, per layer", fmt)


@app.command()
def explore(
    run_dir: Annotated[str, typer.Argument(help="A run directory or URL.")],
    open_page: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the page in a web browser.")
    ] = True,
) -> None:
    """Write explorer.html (the interactive page) for a run and open it, or print its path."""
    run = _existing_run(run_dir)  # before the report's imports, which take seconds
    from layerdrift.storage import RunDir
    from layerdrift.tasks.report import build_explorer

    path = build_explorer(RunDir(run))
    console.print(f"[bold green]explorer[/bold green] {path}")
    if open_page and not _open_in_browser(path):
        console.print("no graphical browser here: open the file above in one")


@app.command()
def compare(
    run_dirs: Annotated[list[str], typer.Argument(help="Two or more run directories.")],
    out: Annotated[Path, typer.Option(help="Folder for the comparison figure.")] = Path("compare"),
) -> None:
    """Draw the per-layer curves of several runs in one figure."""
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run directories")
    existing = [_existing_run(r) for r in run_dirs]  # before the report's imports
    import itertools

    import pandas as pd

    from layerdrift.storage import RunDir
    from layerdrift.tasks.report import compare_runs
    from layerdrift.tasks.report.compare import CROSS_RUN_CSV
    from layerdrift.tasks.report.crossrun import incomparable

    runs = [RunDir(r) for r in existing]
    path = compare_runs(runs, out)
    for a, b in itertools.combinations(runs, 2):
        why = incomparable(a, b)
        if why is not None:
            console.print(f"no final-vs-final similarity for {a.url} ~ {b.url}: {escape(why)}")
    if (out / CROSS_RUN_CSV).is_file():
        frame = pd.read_csv(out / CROSS_RUN_CSV).set_index(["pair", "layer"])
        _print_frame(frame, "final vs final, per layer", "table")
    console.print(f"[bold green]comparison[/bold green] {path}")


@app.command()
def status(run_dir: Annotated[str, typer.Argument(help="A run directory or URL.")]) -> None:
    """Show which stages and pieces of a run are complete."""
    from layerdrift.flows.status import run_status

    table = Table("stage", "piece", "state")
    for stage, piece, state in run_status(_existing_run(run_dir)):
        colour = "green" if state == "complete" else "yellow"
        table.add_row(stage, piece, f"[{colour}]{state}[/{colour}]")
    console.print(table)


@app.command()
def verify(
    run_dir: Annotated[str, typer.Argument(help="A run directory or URL.")],
    repair: Annotated[
        bool, typer.Option(help="Clear damaged pieces so that the next run redoes them.")
    ] = False,
) -> None:
    """Check every stored chunk of activations.zarr and results.zarr (exists, size, checksum).

    Exits 1 when something is damaged; with --repair, clears it (the next `layerdrift run`
    recomputes exactly that) and exits 0.
    """
    from layerdrift.flows.status import verify_run

    damage, repaired = verify_run(_existing_run(run_dir), repair=repair)
    for item in damage:
        console.print(f"[red]damaged[/red] {escape(str(item))}", soft_wrap=True)
    for line in repaired:
        console.print(f"[yellow]repaired[/yellow] {escape(line)}", soft_wrap=True)
    if not damage:
        console.print("[green]verified[/green]: every chunk exists, has its size and checksum")
    elif repair:
        console.print(f"run `layerdrift run` on {run_dir} again to recompute what was cleared")
    else:
        console.print(f"{len(damage)} damaged: `layerdrift verify {run_dir} --repair` clears them")
        raise typer.Exit(1)


def _checkpoint_options(values: list[str]) -> dict[str, str] | None:
    """``--checkpoint LABEL=PATH`` options as an ordered label -> source mapping."""
    given: dict[str, str] = {}
    for value in values:
        label, sep, source = value.partition("=")
        if not sep:
            raise UserError(f"--checkpoint {value!r} is not LABEL=PATH_OR_NAME, e.g. ft=./model")
        if label in given:
            raise UserError(f"--checkpoint label {label!r} is given twice: use one per label")
        given[label] = source
    return given or None


def _existing_run(run_dir: str) -> str:
    from layerdrift.storage import RunDir

    if not RunDir(run_dir).exists("config.json"):
        raise UserError(f"{run_dir} is not a layerdrift run directory (no config.json)")
    return run_dir


def _print_layer_table(run_dir: str) -> None:
    from layerdrift.storage import RunDir
    from layerdrift.tasks.report import per_layer_table

    _print_frame(per_layer_table(RunDir(run_dir)), "final vs base, per layer", "table")


def _print_frame(frame, title: str, fmt: str) -> None:
    """Print a frame as rich tables (split by columns to fit) or as CSV/markdown/JSON text."""
    from layerdrift.tasks.report import tables

    if frame.empty:
        console.print("no per-layer results yet")
        return
    if fmt != "table":
        typer.echo(tables.formatted(frame, fmt))
        return
    shown = frame.iloc[: tables.MAX_TERMINAL_ROWS]
    for block in tables.column_blocks(shown, console.width):
        table = Table(*[str(c) for c in block.columns], title=title)
        for cells in tables.text_rows(block):
            table.add_row(*cells)
        console.print(table)
    if len(frame) > len(shown):
        console.print(f"… {len(frame) - len(shown)} more rows: --format csv prints them all")


def _open_in_browser(path: str) -> bool:
    """Open a local file in a graphical browser; False where there is none (CI, SSH, remote).

    Without a display, Python's webbrowser falls back to text browsers that take over the
    terminal, so it is only asked when a desktop session is there.
    """
    import os
    import webbrowser

    desktop = sys.platform in ("darwin", "win32") or any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY")
    )
    if not desktop or os.environ.get("CI") or not Path(path).exists():
        return False
    return webbrowser.open(Path(path).resolve().as_uri())


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Entry point of the ``layerdrift`` console script."""
    configure_environment()
    # Zarr warns that consolidated metadata is not yet in the v3 spec; xarray reads it fine.
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("layerdrift", "tasks", "storage", "flows"):
        logging.getLogger(name).setLevel(logging.INFO)
    from layerdrift.flows.interrupts import install_signal_handlers

    install_signal_handlers()
    try:
        code = app(standalone_mode=False)  # an int when a command exits early (typer.Exit)
    except (typer.TyperException, click.ClickException) as error:
        # Usage errors (typer raises its bundled click's classes): usage, the reason, exit 2.
        error.show()
        sys.exit(error.exit_code)
    except (typer.Exit, click.exceptions.Exit) as done:
        sys.exit(done.exit_code)
    except (typer.Abort, click.exceptions.Abort):
        _fail("aborted", 130)
    except Exception as error:
        if isinstance(error, _user_errors()):
            _fail(_one_line(error), 2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
