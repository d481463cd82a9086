"""`mlpkit init`, part two: the starter config as YAML text, and writing it.

`render` writes what data/infer.py found (column kinds, the task) with a default model and
training for small tables, and a short comment on every key: what it does, or what to try
instead. The text is written by hand (PyYAML cannot write comments); every column name is
quoted wherever mlpkit's own YAML loader would not read it back as the same text.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from mlpkit.config.schema import DEFAULT_LOSSES, DEFAULT_METRICS
from mlpkit.config.yamlfile import parse_yaml
from mlpkit.data.infer import FEW_VALUES, MAX_CATEGORIES, Starter
from mlpkit.errors import ConfigError, EnvironmentFault, MlpkitError, Problem
from mlpkit.rundir import runs

# The starter model and training, for tables of hundreds to hundreds of thousands of rows; see
# docs/RESULTS.md ("mlpkit init's defaults") for the runs behind these choices.
HIDDEN_UNITS = (64, 64)
BATCH_SIZE = 32  # at most: a small table takes a smaller batch (batch_for)
MIN_BATCHES = 4  # batches an epoch at least, so a tiny table still takes a few steps an epoch
LEARNING_RATE = "1e-3"
# Dropout after each hidden layer on a table of fewer than SMALL_TABLE rows: there the network
# overfits and lost to the linear baselines (diabetes, breast cancer) without it; on larger
# tables (digits) it cost accuracy. Measured in docs/RESULTS.md.
DROPOUT = 0.5
SMALL_TABLE = 1000
TRAIN_SHARE = 0.8  # of the rows: the split written below (split_for: less for tiny tables)
TARGET_STEPS = 2000  # optimizer steps the epochs aim at, so small files train long enough
MIN_EPOCHS, MAX_EPOCHS = 20, 200
PATIENCE = 30  # epochs without a better val_loss before early stopping ends training

_SAFE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_ ./-]*")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")
COMMENT_COLUMN = 35  # where comments start, as in the shipped configs


def _yaml_text(text: str) -> str:
    """A string as a YAML scalar: plain where mlpkit's own loader reads it back as the same
    string (not `yes`, `null`, `1e-3`), else double-quoted (a JSON string is valid YAML)."""
    if _SAFE.fullmatch(text) and text == text.strip():
        try:
            if parse_yaml(f"[{text}]", "name").data == [text]:
                return text
        except ConfigError:
            pass
    return json.dumps(text, ensure_ascii=False)


def _comment(line: str, comment: str) -> str:
    return f"{line.ljust(COMMENT_COLUMN - 1)} # {comment}"


def run_name(path: Path) -> str:
    """The config's name from the file's: letters, digits, '.', '_' and '-' (a folder name)."""
    name = _NAME.sub("-", path.stem).strip("-.") or "data"
    return name[:100]


def batch_for(rows: int) -> int:
    """The batch size for a table of `rows`: BATCH_SIZE, or for a table too small to give it
    MIN_BATCHES batches an epoch, the largest power of two that does (1 at least). Never more
    than the training rows, which `check` would refuse (linnerud's 20 rows: 16 train, batch 4).
    """
    train_rows = int(rows * TRAIN_SHARE)
    if train_rows >= MIN_BATCHES * BATCH_SIZE:
        return BATCH_SIZE
    fits = max(1, train_rows // MIN_BATCHES)
    return int(2 ** math.floor(math.log2(fits)))


def epochs_for(rows: int) -> tuple[int, int]:
    """(epochs, steps an epoch) for a table of `rows`: about TARGET_STEPS optimizer steps, within
    [MIN_EPOCHS, MAX_EPOCHS] epochs."""
    steps = max(1, -(-int(rows * TRAIN_SHARE) // batch_for(rows)))
    return max(MIN_EPOCHS, min(MAX_EPOCHS, -(-TARGET_STEPS // steps))), steps


def split_for(starter: Starter) -> tuple[float, float, float]:
    """The split: (TRAIN_SHARE, 0.1, 0.1), or for a table where a tenth would leave validation or
    test without a row (of the largest class, since classification splits each class apart),
    val and test each the smallest multiple of 0.05 that gives them one, at most 0.25."""
    rows = starter.rows if starter.target.task == "regression" else starter.target.largest_class
    twentieths = min(5, max(2, math.ceil(20 / max(rows, 1))))  # of the rows, for val and test
    return (20 - 2 * twentieths) / 20, twentieths / 20, twentieths / 20


def _counted(count: int, noun: str) -> str:
    """`1 step`, `2 steps`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def render(starter: Starter, out: Path, command: str) -> str:
    """The starter config as YAML text, for a file to be written at `out`; `command` is the
    `mlpkit init ...` line shown in the header."""
    data_path = Path(os.path.relpath(starter.data_path.resolve(), out.resolve().parent))
    lines = [
        f"# Starter config for {starter.data_path.name}: predict '{starter.target.name}' "
        f"({starter.target.task}).",
        f"# Written by: {command}",
        f"# Check it:   mlpkit check {out}",
        f"# Train it:   mlpkit train {out}",
        "# Column kinds and the task come from the cells; the model and the training are",
        "# defaults for small tables. Each key says what it does or what to try instead.",
        _comment(f"name: {_yaml_text(run_name(starter.data_path))}", "runs go to runs/<name>/"),
        _comment("seed: 0", "sets the split, the initial weights, the batch order"),
        "",
        *_data_section(starter, data_path),
        "",
        *_model_section(starter),
        "",
        *_training_section(starter),
    ]
    return "\n".join(lines) + "\n"


def _data_section(starter: Starter, data_path: Path) -> list[str]:
    target, features = starter.target, starter.features
    categorical = [c.name for c in features if c.kind == "categorical"]
    left_out = [c for c in starter.columns if c.kind == "left out" and not c.constant]
    constant = [c for c in starter.columns if c.constant]
    lines = ["data:", _comment(f"  path: {_yaml_text(data_path.as_posix())}", "from this file")]
    if target.task == "multiclass" and target.note.startswith("integers"):
        lines.append("  # integer classes; for a count or a score, regression may suit better")
    lines += [
        _comment(f"  target: {_yaml_text(target.name)}", target.note),
        "  # A column of numbers is numeric (standardized); text or true/false is categorical",
        f"  # (one-hot). Integers with at most {FEW_VALUES} values stay numeric (their order "
        "usually",
        "  # means something); codes among them (1 USA, 2 Europe, 3 Japan) belong in categorical.",
        "  features:",
        *(
            _comment(f"    - {_yaml_text(c.name)}", c.note + ("; a code?" if c.code_like else ""))
            for c in features
        ),
    ]
    if left_out:
        lines += [
            f"  # left out: text with more than {MAX_CATEGORIES} values, or more than half the "
            "rows:",
            "  # an identifier or free text, which a one-hot code would only memorize",
            *(f"  #   - {_yaml_text(c.name)}    # {c.kind_note.split(':')[0]}" for c in left_out),
        ]
    if constant:
        lines += [
            "  # left out: one value (or none) in every row, so nothing to learn from",
            *(
                f"  #   - {_yaml_text(c.name)}    # {c.kind_note.rsplit(':', 1)[0]}"
                for c in constant
            ),
        ]
    names = ", ".join(_yaml_text(name) for name in categorical)
    dates = [c.name for c in features if c.kind == "date"]
    if dates:
        listed = ", ".join(_yaml_text(name) for name in dates)
        why = "year, month, day_of_week, ordinal (days since 1970)"
        lines.append(_comment(f"  dates: [{listed}]", why))
    lines += [
        _comment(f"  categorical: [{names}]", "one-hot encoded (categories of the train rows)"),
        _comment("  standardize: true", "numeric features: mean/std of the train rows"),
    ]
    if target.task == "regression":
        lines.append(
            _comment("  scale_target: true", "learn a standardized target; metrics in its units")
        )
    if starter.has_missing:
        lines += _missing_section(starter)
    train, val, test = split_for(starter)
    split = f"  split: {{train: {train:g}, val: {val:g}, test: {test:g}}}"
    how = "stratified by class; " if target.task != "regression" else ""
    lines += [
        _comment(split, f"{how}val: early stopping"),
        _comment(f"  task: {target.task}", "regression | binary | multiclass"),
    ]
    return lines


def _missing_section(starter: Starter) -> list[str]:
    """data.missing for a table with missing cells: the strategy, then each column that has
    any with the strategy that fills it (median for numbers and dates, most frequent for
    categories, as missing_rules.column_strategy chooses from the section's median)."""
    lines = [
        _comment("  missing:", "empty, NA, null... cells; filled from the train rows"),
        _comment("    strategy: median", "mean | median | most_frequent | constant"),
        _comment("    indicator: false", "true: add an is-missing input per filled column"),
        _comment("    target: drop", f"rows without a target: {_counted(starter.dropped, 'row')}"),
    ]
    gaps = [c for c in starter.features if c.missing]
    if gaps:
        lines.append(_comment("    columns:", "those with missing cells, and what fills them"))
        lines += [
            _comment(
                f"      {_yaml_text(c.name)}: "
                + ("most_frequent" if c.kind == "categorical" else "median"),
                _counted(c.missing, "missing cell"),
            )
            for c in gaps
        ]
    return lines


def _model_section(starter: Starter) -> list[str]:
    units, activation, why = {
        "regression": (1, None, "linear output: a number"),
        "binary": (1, "sigmoid", "P(positive class); trained from logits"),
        "multiclass": (starter.target.classes, "softmax", "one unit per class"),
    }[starter.target.task]
    tips = ["wider or deeper: more capacity, more to overfit", "one layer: a smaller model"]
    hidden = []
    for n, tip in zip(HIDDEN_UNITS, tips, strict=True):
        hidden.append(_comment(f"    - {{type: dense, units: {n}, activation: relu}}", tip))
        if starter.rows < SMALL_TABLE:
            dropout = f"    - {{type: dropout, rate: {DROPOUT}}}"
            hidden.append(_comment(dropout, "small tables overfit without it; remove it for none"))
    head = f"{{type: dense, units: {units}" + (
        f", activation: {activation}}}" if activation else "}"
    )
    return ["model:", "  layers:", *hidden, _comment(f"    - {head}", why)]


def _training_section(starter: Starter) -> list[str]:
    task = starter.target.task
    epochs, steps = epochs_for(starter.rows)
    return [
        "training:",
        _comment(
            f"  epochs: {epochs}",
            f"at most; {_counted(steps, 'step')} an epoch, {epochs * steps} in all",
        ),
        _comment(
            f"  batch_size: {batch_for(starter.rows)}", "smaller: noisier steps, slower epochs"
        ),
        _comment(
            f"  optimizer: {{name: adam, lr: {LEARNING_RATE}}}", "higher lr: faster, less stable"
        ),
        _comment(f"  loss: {DEFAULT_LOSSES[task]}", f"the {task} loss"),
        _comment(f"  metrics: [{', '.join(DEFAULT_METRICS[task])}]", "each epoch, on the val rows"),
        _comment("  early_stopping:", "stop when val_loss stops improving; keep the best"),
        _comment(f"    patience: {PATIENCE}", "epochs without a better val_loss"),
    ]


def check_out(out: Path, force: bool) -> None:
    """Refuse an `out` that exists (unless `force`), is a folder, or lies in no folder.

    Raises:
        MlpkitError: one of those, naming the path.
    """
    if out.is_dir():
        raise MlpkitError(Problem("is a directory", file=str(out), hint="give a .yaml file path"))
    if out.exists() and not force:
        raise MlpkitError(
            Problem("already exists", file=str(out), hint="pass --force to overwrite")
        )
    if not out.parent.is_dir():
        raise MlpkitError(Problem("the folder does not exist", file=str(out.parent)))


def write(out: Path, text: str, force: bool) -> None:
    """Write the config to `out` atomically (runs.write_atomic: a temporary name in its folder,
    then a rename).

    Raises:
        MlpkitError: as check_out.
        EnvironmentFault: the write failed (permissions, disk).
    """
    check_out(out, force)
    try:
        runs.write_atomic(out, text.encode("utf-8"))
    except OSError as exc:  # not runs.write_fault: its hints are about run directories
        raise EnvironmentFault(Problem(f"cannot write: {exc.strerror}", file=str(out))) from None
