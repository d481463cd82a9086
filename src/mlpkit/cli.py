"""The `mlpkit` command line: parse, call a flow (flows/, one module per verb), render. Nothing
else. Long (one typed function per verb, whose options and docstring are its --help) but
flat: every command reads alone, and the app's options stay in one place.

Expected failures (MlpkitError) print one line per problem on stderr with their exit code; a
usage mistake prints one line with exit 2; anything else is a bug: one line, the traceback saved
to a report file (shown with --debug or MLPKIT_DEBUG=1), exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click import exceptions as click_exceptions  # typer's vendored click

from mlpkit.errors import ConfigError, EnvironmentFault, MlpkitError, Problem
from mlpkit.flows.launch import (
    launch,
    launched,
    rank,
    refuse_with_torchrun,
    train_argv,
)

if TYPE_CHECKING:
    from rich.console import Console

    from mlpkit.config.load import LoadedConfig
    from mlpkit.config.schema import Config
    from mlpkit.flows.crossval import CrossvalResult, FoldResult
    from mlpkit.flows.fit import Listener, Start, TrainResult
    from mlpkit.report.crossval import FoldsPrinter
    from mlpkit.report.display import EpochPrinter, SeedsPrinter
    from mlpkit.report.summary import Summary
    from mlpkit.train.loop import EpochRecord

# Heavy modules (torch, pandas, sklearn, rich's renderers, the flows) are imported inside
# the commands that use them, so `mlpkit --help`, `mlpkit COMMAND --help` and a config mistake
# answer without importing torch (tests/test_startup.py). A config is loaded first, on its own
# (config.py needs no torch), so its mistakes exit 2 before anything heavy is imported.

# Failures of the machine rather than of mlpkit or the input: exit 4.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EIO,
}

app = typer.Typer(
    name="mlpkit",
    help="Train multilayer perceptrons on tabular data from one YAML file.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _home(path: Path | None) -> Path | None:
    """A path argument with a leading `~` or `~user` expanded, as a shell does only for an
    unquoted word (not in `--runs-dir=~/runs`): a folder named `~` is never what was meant."""
    return None if path is None else Path(os.path.expanduser(path))


def _homes(paths: list[Path] | None) -> list[Path] | None:
    """_home for each path of a list argument."""
    return None if paths is None else [Path(os.path.expanduser(path)) for path in paths]


def _home_text(text: str) -> str:
    """_home for a path option typed as text (--runs-dir, where an empty value is refused)."""
    return os.path.expanduser(text)


ConfigArg = Annotated[
    Path, typer.Argument(help="Experiment config (YAML).", show_default=False, callback=_home)
]
RunArg = Annotated[
    Path, typer.Argument(help="A run directory printed by mlpkit train.", callback=_home)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set training.epochs=5 (repeatable)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="auto, cpu or cuda; overrides training.device.")
]


class PlotsMode(StrEnum):
    """--plots: when a run's plots are drawn (flows/plotting.py)."""

    background = "background"
    wait = "wait"
    off = "off"


PlotsOpt = Annotated[
    PlotsMode,
    typer.Option(
        envvar="MLPKIT_PLOTS",
        help="background: drawn by a detached process after the run directory is printed "
        "(the command does not wait); wait: drawn before the command exits; off: not drawn "
        "(mlpkit plot RUN draws them later).",
        case_sensitive=False,
    ),
]


def _stdout() -> Console:
    from rich.console import Console

    # Off a terminal rich would wrap at 80 columns; tables read better a little wider.
    # markup=False: a path like runs/x[1] is text, not a style tag; soft_wrap: paths stay whole.
    return Console(
        highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120
    )


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback of an internal error (exit 1).")
    ] = False,
) -> None:
    """Train multilayer perceptrons on tabular data from one YAML file."""


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Argument(help="Experiment config (YAML).", show_default=False, callback=_home),
    ] = None,
    set_: SetOpt = None,
    runs_dir: Annotated[
        str, typer.Option(help="Where run directories go.", callback=_home_text)
    ] = "runs",
    device: DeviceOpt = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only the run directory (with --seeds: each run's, then the summary file).",
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this interrupted run in place (CONFIG, if given, must match).",
            callback=_home,
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Train N runs, with the config's seed, seed+1, ...; print each test metric's "
            "mean and sample std (ddof=1) and write them to <runs-dir>/<name>/seeds-*.json.",
            show_default=False,
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="k-fold cross-validation (sets data.split.folds): K runs in "
            "<runs-dir>/<name>/cv-*/fold-i, each validating on one part of the non-test rows; "
            "print each metric's mean and sample std. With --seeds: one per seed.",
            show_default=False,
        ),
    ] = None,
    ensemble: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train K networks from K seeds as one run whose predictions average theirs "
            "(sets model.ensemble).",
            show_default=False,
        ),
    ] = None,
    plots: PlotsOpt = PlotsMode.background,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train data-parallel on N processes of this machine: the same as torchrun "
            "--standalone --nproc-per-node N -m mlpkit train ... (each process trains "
            "batch_size rows a step, or its share with training.batch_scope: global).",
            show_default=False,
        ),
    ] = None,
    max_restarts: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --nproc: restart the processes this many times after a failure, each "
            "time resuming the run from its last checkpoint (torchrun's --max-restarts).",
        ),
    ] = 0,
) -> None:
    """Train CONFIG into a new run directory and print its path as the last line.

    Ctrl-C or SIGTERM stops at the next step with a checkpoint; --resume RUN carries on.
    --seeds N trains N runs and prints the spread of their test metrics; the last line is
    then the summary file. --folds K cross-validates; the last line is then its folder, which
    --resume carries on too. The plots (RUN/plots/*.png) follow a moment after the command
    returns, drawn by a detached process; --plots wait draws them before it returns.

    Under torchrun (or with --nproc N) one run trains over the processes: rank 0 writes it.

    Example: mlpkit train configs/mpg.yaml --set training.epochs=5
    """
    if nproc is not None or launched():
        refuse_with_torchrun(seeds, folds, ensemble, nproc, max_restarts)
    if nproc is not None:
        argv = train_argv(config, set_, runs_dir, device, quiet, resume, plots.value)
        raise typer.Exit(launch(argv, nproc, max_restarts))
    if config is None and resume is None:
        raise MlpkitError(
            Problem(
                "needs a CONFIG file, or --resume RUN",
                where="mlpkit train",
                hint="see mlpkit train --help",
            )
        )
    if not runs_dir:  # Path("") would silently mean the working directory
        raise MlpkitError(Problem("is empty", where="--runs-dir", hint="give a folder, e.g. runs"))
    overrides = [*(set_ or []), *([f"data.split.folds={folds}"] if folds is not None else [])]
    overrides += [f"model.ensemble={ensemble}"] if ensemble is not None else []
    if folds is not None and resume is not None:
        hint = "resume alone: mlpkit train --resume FOLDER carries on a cross-validation"
        raise MlpkitError(Problem("cannot be combined with --resume", where="--folds", hint=hint))
    with _plots_after(plots) as done:
        if seeds is not None:
            _train_seeds(config, resume, overrides, Path(runs_dir), device, quiet, seeds, done)
        elif resume is not None and _is_crossval(resume):
            _train_folds(config, overrides, Path(runs_dir), device, quiet, done, resume)
        else:
            _train_run(config, resume, overrides, set_ or [], Path(runs_dir), device, quiet, done)


def _train_run(
    config: Path | None,
    resume: Path | None,
    overrides: list[str],
    set_: list[str],
    runs_dir: Path,
    device: str | None,
    quiet: bool,
    done: list[Path],
) -> None:
    """train CONFIG or --resume RUN: the epoch lines, the metrics table, the run directory
    last (a config with data.split.folds: a cross-validation)."""
    loaded = None
    if config is not None and resume is None:
        loaded = _load_config(config, overrides)  # config mistakes exit here, before torch
        split = loaded.config.data.split
        if split.folds is not None and split.fold is None:
            _train_folds(config, overrides, runs_dir, device, quiet, done)
            return
    if quiet or rank() != 0:  # the run directory alone: no rich renderers to import
        result = _fit_one(loaded, resume, config, set_, runs_dir, device, None)
        if result is None:  # a rank other than 0 of a torchrun group: rank 0 prints
            return
    else:
        from mlpkit.report import display

        console = _stdout()
        printer = display.EpochPrinter(console)
        try:
            result = _fit_one(loaded, resume, config, set_, runs_dir, device, _EpochLines(printer))
        finally:
            printer.close()
        assert result is not None  # rank 0 (or no torchrun) trains a run
        console.print(display.metrics_table(result.metrics))
    print(result.run_dir)
    done.append(result.run_dir)


def _fit_one(
    loaded: LoadedConfig | None,
    resume: Path | None,
    config: Path | None,
    set_: list[str],
    runs_dir: Path,
    device: str | None,
    listener: Listener | None,
) -> TrainResult | None:
    """The loaded config trained into a new run, or the --resume run carried on. Under
    torchrun: rank 0 does that over the group; any other rank follows it and returns None."""
    if launched():
        from mlpkit.flows.torchrun import train_in_group

        return train_in_group(loaded, resume, config, set_, runs_dir, device, listener)
    if loaded is None:
        assert resume is not None
        from mlpkit.flows.resume import resume as resume_run

        return resume_run(resume, config, set_, device, listener)
    from mlpkit.flows.train import train as train_run

    return train_run(loaded, runs_dir, device, listener)


@contextlib.contextmanager
def _plots_after(mode: PlotsMode) -> Iterator[list[Path]]:
    """The runs a command completes, collected as it goes; their plots are drawn when it ends,
    as --plots says (flows/plotting.py). A command that fails or is stopped midway still gets
    the plots of the runs it completed, in the background (unless off): drawing never holds
    up an error or a Ctrl-C."""
    done: list[Path] = []
    try:
        yield done
    except BaseException:
        if done and mode is not PlotsMode.off:
            from mlpkit.flows import plotting

            plotting.after(done, "background")
        raise
    if done and mode is not PlotsMode.off:
        from mlpkit.flows import plotting

        plotting.after(done, "wait" if mode is PlotsMode.wait else "background")


@app.command()
def check(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run every check train runs (config, data columns and cells, loss vs target), no training.

    Example: mlpkit check configs/mpg.yaml
    """
    loaded = _load_config(config, set_)  # config mistakes exit here, before torch is imported
    from mlpkit.flows.check import check as check_config

    checked = check_config(loaded)
    if loaded.config.sweep is not None:  # every path and value of the search, too
        from mlpkit.config.sweep_rules import sweep_problems

        problems = sweep_problems(loaded, set_ or [])
        if problems:
            raise ConfigError(problems)
    prepared = checked.prepared
    counts = prepared.split_counts
    print(
        f"ok: {config}: {prepared.data_rows} rows{prepared.data_note}, split "
        f"{counts['train']}/{counts['val']}/"
        f"{counts['test']}{_folds_note(prepared.config, counts)}, "
        f"{len(prepared.preprocessor.input_names)} inputs, "
        f"{checked.summary.total_parameters:,} parameters"
    )


def _folds_note(config: Config, counts: dict[str, int]) -> str:
    """check's word on the split of a cross-validation: which fold the counts are."""
    split = config.data.split
    if split.folds is None:
        return ""
    rows = counts["train"] + counts["val"]
    return (
        f" (fold {split.fold or 1} of {split.folds} over {rows} rows; "
        "data.split.train and val are not used)"
    )


@app.command()
def summary(
    target: Annotated[
        Path, typer.Argument(help="A config file or a run directory.", callback=_home)
    ],
    set_: SetOpt = None,
    graph: Annotated[bool, typer.Option("--graph", help="Print a Mermaid flowchart.")] = False,
) -> None:
    """Print the model's layer table (shapes, options, parameters) without training.

    Example: mlpkit summary configs/mpg.yaml
    """
    from mlpkit.report.summary import render_mermaid, render_table

    if target.is_dir():
        if set_:
            raise MlpkitError(
                Problem(
                    "applies to a config file, not a run directory",
                    where="--set",
                    hint=f"drop --set to summarize {target}",
                )
            )
        from mlpkit.flows.check import summary_of_run

        result = summary_of_run(target)
    else:
        loaded = _load_config(target, set_)  # config mistakes exit here, before torch
        from mlpkit.flows.check import summary_of_config

        result = summary_of_config(loaded)
    if graph:
        sys.stdout.write(render_mermaid(result))
    else:
        _stdout().print(render_table(result))


@app.command(
    "sweep",
    epilog="Example: mlpkit sweep bench/configs/mpg-sweep.yaml --trials 16 --workers 2",
)
def sweep_command(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Experiment config with a sweep: section (YAML).",
            show_default=False,
            callback=_home,
        ),
    ] = None,
    set_: SetOpt = None,
    trials: Annotated[
        int | None,
        typer.Option(min=1, help="Trials to run (overrides sweep.trials).", show_default=False),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="Start no trial after S seconds (sweep.timeout).", show_default=False
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Trial processes on this machine, one study.")
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            help="An RDB URL (postgresql://user@host/db) shared by workers on many machines; "
            "default: a journal file in the sweep folder.",
            show_default=False,
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            help="The study's name (default: the config's name with --storage, else the "
            "folder's); the same name on another machine joins it.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Carry on this sweep folder up to its budget.", callback=_home),
    ] = None,
    join: Annotated[Path | None, typer.Option(hidden=True, callback=_home)] = None,
    runs_dir: Annotated[
        str, typer.Option(help="Where sweep folders go.", callback=_home_text)
    ] = "runs",
    device: DeviceOpt = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the sweep folder.")
    ] = False,
) -> None:
    """Search hyperparameters on Optuna: each trial an ordinary run in one sweep folder, which
    also gets trials.csv, best.yaml (the best trial's config) and plots.

    The config's sweep: section names the metric (default val_loss), the trials, the sampler
    (tpe, random, grid, cmaes), the pruner (median, hyperband, none) and the space: dotted
    config paths mapped to {log_uniform: [a, b]}, {uniform: [a, b]}, {int: [a, b], log: true}
    or {choice: [...]}. Ctrl-C stops at the next step; --resume SWEEP carries on.
    """
    if launched():
        hint = "run it without torchrun; --workers N runs trials in parallel"
        raise MlpkitError(Problem("runs its trials as runs of their own", where="sweep", hint=hint))
    from mlpkit.flows import sweep as sweeping

    if join is not None:
        sweeping.join(join, device)
        return
    options = sweeping.Options(trials, timeout, workers, storage, study, device)
    from mlpkit.report.display import TrialLines

    lines = TrialLines(quiet)
    if resume is not None:
        folder, info = sweeping.resume(resume, options, lines)
    else:
        if config is None:
            raise MlpkitError(Problem("give a CONFIG, or --resume SWEEP", where="mlpkit sweep"))
        _load_config(config, set_)  # config mistakes exit here, before optuna and torch
        folder, info = sweeping.sweep(config, set_ or [], Path(runs_dir), options, lines)
    if not quiet and info.best is not None:
        best = info.best
        print(f"best: trial {best.number}, {info.metric} {best.value:.6g}  {folder / best.run}")
        print(f"train it: mlpkit train {folder / 'best.yaml'}")
    print(folder)


@app.command("eval")
def evaluate(
    run: RunArg,
    data: Annotated[
        Path | None, typer.Option(help="Score every row of this CSV instead.", callback=_home)
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Rebuild a run's model from its directory and score it (its own test split by default).

    Example: mlpkit eval runs/mpg/20261121-101500-1a2b3c
    """
    from mlpkit.flows.evaluate import evaluate_run
    from mlpkit.report import display

    result = evaluate_run(run, data, device)
    metrics = result.run.metrics
    reference = metrics.test if metrics is not None and data is None else None
    console = _stdout()
    console.print(f"{result.run.path}: {result.rows} rows of the {result.source}")
    console.print(display.scores_table(result.scores, reference))


@app.command("predict")
def predict_command(
    run: RunArg,
    data: Annotated[
        Path,
        typer.Option(help="CSV with the feature columns (no target needed).", callback=_home),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Write the predictions here, not stdout.", callback=_home)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Predict every row of a CSV with a run's model: columns line,prediction.

    Example: mlpkit predict runs/mpg/20261121-101500-1a2b3c --data new.csv --out preds.csv
    """
    if out is not None and out.exists() and not force:
        raise MlpkitError(
            Problem("already exists", file=str(out), hint="pass --force to overwrite")
        )
    from mlpkit.flows.predict import predict_run
    from mlpkit.rundir import runs

    predictions = predict_run(run, data, device)
    if out is None:
        sys.stdout.write(predictions.to_csv())
    else:
        runs.write_bytes(out, predictions.to_csv().encode())


@app.command("export")
def export_command(
    run: RunArg,
    format_: Annotated[
        str, typer.Option("--format", help="onnx or torchscript.", show_default=False)
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the model here (default: model.onnx or model.torchscript.pt in RUN).",
            callback=_home,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the file if it exists.")
    ] = False,
) -> None:
    """Write a run's model with its preprocessing as one file that takes the raw feature columns
    and gives what predict gives; checked against predict on the run's test rows first.

    Example: mlpkit export runs/mpg/20261121-101500-1a2b3c --format onnx
    """
    from mlpkit.flows import export

    done = export.export_run(run, format_, out, force)
    record = done.record
    print(
        f"{done.path}: {record.format}, matches mlpkit predict on the run's {record.rows} "
        f"{record.split} rows (largest difference {record.max_abs_diff:.2g})"
    )


@app.command("runs")
def runs_command(
    folder: Annotated[
        Path, typer.Argument(help="A folder of runs (or one run).", callback=_home)
    ] = Path("runs"),
) -> None:
    """List runs with their status, epochs and key test metrics; dead processes show as
    interrupted.

    Example: mlpkit runs runs/
    """
    from rich.table import Table

    from mlpkit.rundir import catalog

    rows = catalog.list_runs(folder)
    if not rows:
        print(f"no runs under {folder}")
        return
    table = Table("run", "name", "status", "epochs", "test metrics", "note", box=None)
    folders = {row.path for row in rows if row.kind == "crossval"}
    for row in rows:
        shown = row.path.relative_to(folder) if row.path != folder else row.path
        if row.path.parent in folders:  # a fold, listed under its cross-validation
            shown = Path(f"  {row.path.name}")
        metrics = ", ".join(
            f"{name} {value:.4g}" + (f" ± {row.spread[name]:.2g}" if name in row.spread else "")
            for name, value in row.metrics.items()
        )
        table.add_row(str(shown), row.name, row.status, row.epochs, metrics or "-", row.note)
    _stdout().print(table)


@app.command("plot")
def plot_command(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN",
            help="Run directories printed by mlpkit train.",
            show_default=False,
            callback=_homes,
        ),
    ],
    background: Annotated[
        bool, typer.Option("--background", hidden=True)  # the child train starts
    ] = False,
) -> None:
    """Draw a complete run's plots again into RUN/plots/ and print their paths (several runs:
    each in turn).

    Learning curves; predicted vs actual and residuals (regression); confusion matrix, ROC and
    precision-recall curves (classification). Drawn from the run's own history.csv,
    metrics.json and predictions.csv, as mlpkit train has them drawn when it finishes.

    Example: mlpkit plot runs/mpg/20261121-101500-1a2b3c
    """
    if background:
        from mlpkit.flows import plotting

        plotting.draw_detached(runs)
        return
    from mlpkit.report import plots

    for run in runs:
        for path in plots.redraw(run):
            print(path)


@app.command()
def compare(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN",
            help="Complete run directories, or folders of runs (their complete runs).",
            show_default=False,
            callback=_homes,
        ),
    ],
) -> None:
    """Show runs side by side: test metrics (the best marked *), the baselines' test scores,
    and the config fields that differ.

    Example: mlpkit compare runs/mpg/20261121-101500-1a2b3c runs/mpg/20261121-101700-4d5e6f
    """
    from mlpkit.report import compare as comparing

    found = comparing.compare(paths)
    for path, status in found.skipped:
        if status == "given twice":
            sys.stderr.write(f"Warning: {path} is given twice; shown once\n")
        else:
            sys.stderr.write(f"Warning: skipped {path}: the run is {status}, not complete\n")
    _stdout().print(comparing.render(found))


@app.command("init")
def init_command(
    data: Annotated[
        Path,
        typer.Argument(
            help="A CSV (or Parquet) file with a header.", show_default=False, callback=_home
        ),
    ],
    target: Annotated[str, typer.Option(help="The column to predict.", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the config [default: <data file name>.yaml, here].",
            callback=_home,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Write a starter config for DATA: feature kinds and the task inferred from its cells, a
    default model for small tables, and a comment on every key.

    Example: mlpkit init data/mpg.csv --target mpg --out mpg.yaml
    """
    import shlex

    from rich.table import Table

    from mlpkit.data import infer
    from mlpkit.flows import init

    out = out or Path(f"{init.run_name(data)}.yaml")
    init.check_out(out, force)  # before reading the data
    found = infer.infer(data, target)
    words = ["mlpkit", "init", str(data), "--target", target, "--out", str(out)]
    init.write(out, init.render(found, out, shlex.join(words)), force)
    table = Table("column", "kind", "from its cells", box=None)
    table.add_row(found.target.name, f"target: {found.target.task}", found.target.note)
    for column in found.columns:
        table.add_row(column.name, column.kind, column.note)
    console = _stdout()
    console.print(table)
    console.print(f"wrote {out}; check it with: mlpkit check {out}; train: mlpkit train {out}")


def _headline(start: Start) -> str:
    """What is about to train, in one line."""
    prepared = start.prepared
    return (
        f"{prepared.config.name}: {prepared.data_rows} rows of {prepared.table.path.name}"
        f"{prepared.data_note} -> {prepared.describe_split()}; "
        f"{len(prepared.preprocessor.input_names)} inputs; "
        f"{_parameters(start.summary, start.together)}; device {start.device}"
        f"{_spread(start)}"
    )


def _spread(start: Start) -> str:
    """Under torchrun: the processes and the effective batch they train a step."""
    spread = start.spread
    if spread is None:
        return ""
    return (
        f"; {spread.processes} processes ({spread.backend}) x batch {spread.batch_per_process}"
        f" = {spread.effective_batch} rows a step"
    )


def _parameters(summary: Summary, together: bool) -> str:
    """The headline's parameter count; an ensemble's says how many members share it."""
    if summary.members == 1:
        return f"{summary.total_parameters:,} parameters"
    how = "stacked, trained together" if together else "trained one after another"
    return f"{summary.total_parameters:,} parameters in an ensemble of {summary.members} ({how})"


class _EpochLines:
    """train's listener: the headline, then a line per epoch under a progress bar."""

    def __init__(self, printer: EpochPrinter) -> None:
        self.printer = printer

    def started(self, start: Start) -> None:
        headline, done, position = _headline(start), 0, start.position
        if position is not None:  # a resumed run: say where it carries on
            done = position.epoch - 1
            headline += f"; resuming at epoch {position.epoch}, batch {position.batches_done + 1}"
        has_val = len(start.prepared.split.val) > 0
        training = start.prepared.config.training
        scheduled = training.scheduler is not None
        members = 1 if start.together else start.prepared.config.model.ensemble
        self.printer.start(
            headline, training.epochs, has_val, done, show_lr=scheduled, members=members
        )

    def epoch(self, record: EpochRecord) -> None:
        self.printer(record)


class _SeedLines:
    """train --seeds' listener: each run's headline and its epochs under one bar."""

    def __init__(self, printer: SeedsPrinter) -> None:
        self.printer = printer

    def started(self, start: Start) -> None:
        config = start.prepared.config
        in_turn = 1 if start.together else config.model.ensemble  # members train in turn
        self.printer.start(_headline(start), config.seed, config.training.epochs * in_turn)

    def epoch(self, record: EpochRecord) -> None:
        self.printer(record)


def _train_seeds(
    config: Path | None,
    resume: Path | None,
    overrides: list[str],
    runs_dir: Path,
    device: str | None,
    quiet: bool,
    count: int,
    done: list[Path],
) -> None:
    """train --seeds N: a line per run as it ends, then the table of the spread (seeds.py) and,
    last, the summary file. With --quiet: the run directories and the summary file only."""
    if resume is not None:
        raise MlpkitError(
            Problem(
                "cannot be combined with --resume",
                where="--seeds",
                hint="resume the run alone, then train the other seeds with --set seed=S",
            )
        )
    assert config is not None  # train refused neither CONFIG nor --resume already
    loaded = _load_config(config, overrides)  # config mistakes exit here, before torch
    if loaded.config.data.split.folds is not None and loaded.config.data.split.fold is None:
        _train_folds(config, overrides, runs_dir, device, quiet, done, count=count)
        return
    from mlpkit.flows import seeds
    from mlpkit.report import display

    console = _stdout()
    printer = display.SeedsPrinter(console, count)
    listener: Listener | None = None if quiet else _SeedLines(printer)

    def on_run(seed: int, place: int, result: TrainResult) -> None:
        done.append(result.run_dir)
        if quiet:
            print(result.run_dir)
        else:
            printer.finished(seed, place, result.run_dir, result.metrics["test"])

    try:
        found, path = seeds.repeat(config, overrides, runs_dir, count, device, listener, on_run)
    finally:
        printer.close()
    if not quiet:
        console.print(seeds.render(found))
    print(path)


def _is_crossval(path: Path) -> bool:
    from mlpkit.rundir import crossval

    return crossval.is_crossval(path)


class _FoldLines:
    """train --folds' listener: the headline once, each fold's epochs under one bar."""

    def __init__(self, printer: FoldsPrinter, seeds: bool) -> None:
        self.printer = printer
        self.seeds = seeds

    def started(self, start: Start) -> None:
        config = start.prepared.config
        split = config.data.split
        label = f"seed {config.seed} " if self.seeds else ""
        label += f"fold {split.fold}/{split.folds}"
        done = start.position.epoch - 1 if start.position is not None else 0
        in_turn = 1 if start.together else config.model.ensemble  # members train in turn
        self.printer.start(_folds_headline(start), label, config.training.epochs * in_turn, done)

    def epoch(self, record: EpochRecord) -> None:
        self.printer(record)


def _folds_headline(start: Start) -> str:
    """What a cross-validation trains, in one line."""
    prepared = start.prepared
    split, counts = prepared.config.data.split, prepared.split_counts
    return (
        f"{prepared.config.name}: {prepared.data_rows} rows of {prepared.table.path.name}"
        f"{prepared.data_note} -> {counts['test']} test, {split.folds} folds of the other "
        f"{counts['train'] + counts['val']} (each validates on one, trains on the rest); "
        f"{len(prepared.preprocessor.input_names)} inputs; "
        f"{start.summary.total_parameters:,} parameters; device {start.device}"
    )


def _train_folds(
    config: Path | None,
    overrides: list[str],
    runs_dir: Path,
    device: str | None,
    quiet: bool,
    done: list[Path],
    resume: Path | None = None,
    count: int | None = None,
) -> None:
    """train --folds K (or a config with data.split.folds), or --resume of its folder: a line
    per fold as it ends, the table of every metric's spread, and last the folder. With
    --seeds (`count`): a folder per seed, then the spread of their means and the summary
    file. With --quiet: the fold directories (with --seeds: the folders), then the last line."""
    if launched():
        hint = "cross-validate without torchrun: the folds train stacked on one process"
        raise MlpkitError(Problem("trains K runs, not under torchrun", where="--folds", hint=hint))
    from mlpkit.flows import crossval
    from mlpkit.report import crossval as shown
    from mlpkit.rundir import runs

    source = resume / runs.CONFIG if resume is not None else config
    assert source is not None  # train refused neither CONFIG nor --resume already
    folds = _load_config(source, [] if resume else overrides).config.data.split.folds
    console = _stdout()
    printer = shown.FoldsPrinter(console, folds or 0)
    listener: Listener | None = None if quiet else _FoldLines(printer, count is not None)

    def on_fold(found: FoldResult) -> None:
        done.append(found.run_dir)
        if quiet:
            if count is None:
                print(found.run_dir)
            return
        label = f"seed {found.seed} " if count is not None else ""
        label += f"fold {found.fold}/{printer.folds}"
        printer.finished(label, found.metrics, found.run_dir)

    def on_cv(seed: int, place: int, result: CrossvalResult) -> None:
        if quiet:
            print(result.cv_dir)
        else:
            line = shown.mean_line(result.info)
            console.print(f"seed {seed} ({place}/{count}): {line}  {result.cv_dir}")

    try:
        if count is not None:
            assert config is not None
            summary, path = crossval.over_seeds(
                config, overrides, runs_dir, count, device, listener, on_fold, on_cv
            )
        elif resume is not None:
            result = crossval.resume(resume, config, overrides, device, listener, on_fold)
        else:
            assert config is not None
            result = crossval.cross_validate(config, overrides, runs_dir, device, listener, on_fold)
    finally:
        printer.close()
    if count is not None:
        from mlpkit.flows import seeds

        if not quiet:
            console.print(seeds.render(summary))
        print(path)
        return
    if not quiet:
        console.print(shown.render(result.info))
    print(result.cv_dir)


def _load_config(config: Path, overrides: list[str] | None) -> LoadedConfig:
    """Load and validate CONFIG with its --set overrides (raises ConfigError); torch-free."""
    from mlpkit.config.load import load_config

    return load_config(config, overrides or [])


def run_cli(argv: list[str]) -> int:
    """Run one command and return its exit code; never raises (but for SystemExit)."""
    # --debug works anywhere on the line, so it is taken out before the command is parsed.
    debug = "--debug" in argv or os.environ.get("MLPKIT_DEBUG") == "1"
    argv = [arg for arg in argv if arg != "--debug"]
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="mlpkit", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except MlpkitError as exc:
        this_rank = rank()
        if this_rank == 0:
            sys.stderr.write(exc.render() + "\n")
        elif isinstance(exc, EnvironmentFault):  # its own: a lost peer, a full disk
            sys.stderr.write(f"rank {this_rank}: {exc.render()}\n")
        # else what rank 0 meets too (the same config and data, one stop), and says
        return exc.exit_code
    except click_exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "mlpkit"
        message = exc.format_message().rstrip(".")
        sys.stderr.write(f"Error: {where}: {message}; see {where} --help\n")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("Error: interrupted\n")
        return 130
    except OSError as exc:  # whatever write escaped runs.write_bytes: still the machine's fault
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            return _bug(debug)
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"Error: {where}{exc.strerror}\n")
        return 4
    except MemoryError:
        sys.stderr.write("Error: out of memory; try a smaller data.chunk_rows or batch_size\n")
        return 4
    except Exception:  # a bug: keep the report, show one line
        return _bug(debug)


def _bug(debug: bool) -> int:
    """Report the exception being handled as a bug: one line, the traceback in a file."""
    import traceback

    report = _write_report(traceback.format_exc())
    if debug:
        sys.stderr.write(traceback.format_exc())
    kind = sys.exc_info()[0]
    sys.stderr.write(
        f"Error: internal error ({kind.__name__ if kind else 'unknown'}); "
        f"this is a bug; the full report is in {report}\n"
    )
    return 1


def _write_report(text: str) -> str:
    import tempfile

    from mlpkit.rundir.runs import stamp as time_stamp

    stamp = time_stamp()
    fd, path = tempfile.mkstemp(prefix=f"mlpkit-crash-{stamp}-", suffix=".txt")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def main() -> None:
    """Console-script entry point."""
    code = run_cli(sys.argv[1:])
    if "torch" not in sys.modules:
        sys.exit(code)
    # Every file of the command is written, synced and closed by now, and each tracker has
    # finished; what is left is the interpreter tearing torch's modules down (~0.3 s on this
    # machine, a tenth of a training run of mpg), which nobody waits on for a reason.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
