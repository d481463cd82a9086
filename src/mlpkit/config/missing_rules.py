"""The rules of data.missing that span several fields: each column it names is a feature, each
strategy suits its column's kind, and a constant has a value of that kind.

A section-wide `mean` or `median` applies to the numeric features; categorical ones take
`most_frequent` (what a mean of categories would be), so `missing: median` works on a table of
both kinds. A per-column `mean` or `median` on a categorical column is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpkit.config.schema import ColumnMissing, DataConfig, MissingConfig
from mlpkit.errors import Problem, clip, did_you_mean

if TYPE_CHECKING:  # load.py imports this module (through rules.py): named here, not imported
    from mlpkit.config.load import LoadedConfig

AVERAGES = ("mean", "median")


def column_strategy(data: DataConfig, column: str) -> str:
    """The strategy that fills `column`'s missing cells ("error": none does)."""
    missing = data.missing
    if missing is None:
        return "error"
    strategy = missing.strategy_for(column)
    own = missing.columns.get(column)
    named = own is not None and own.strategy is not None
    if strategy in AVERAGES and column in data.categorical and not named:
        return "most_frequent"
    return strategy


def missing_problems(loaded: LoadedConfig) -> list[Problem]:
    """Every problem of data.missing, each at the key to change."""
    data = loaded.config.data
    missing = data.missing
    if missing is None:
        return []
    problems = _value_problems(loaded, missing, ("data", "missing"))
    features = set(data.features)
    for column, own in missing.columns.items():
        key = ("data", "missing", "columns", column)
        if column not in features:
            problem = f"'{clip(column)}' is not in data.features"
            hint = did_you_mean(column, data.features) or "name a feature column"
            problems.append(loaded.problem(key, problem, hint))
            continue
        if own.strategy in AVERAGES and column in data.categorical:
            problem = f"{own.strategy} cannot fill the categorical column '{clip(column)}'"
            problems.append(loaded.problem(key, problem, "use most_frequent or constant"))
        problems += _value_problems(loaded, own, key, column)
    return problems


def _value_problems(
    loaded: LoadedConfig,
    owner: MissingConfig | ColumnMissing,
    key: tuple[str, ...],
    column: str | None = None,
) -> list[Problem]:
    """A constant strategy has a value, of a kind its columns take; no other strategy has one."""
    strategy, value = owner.strategy, owner.value
    data = loaded.config.data
    if strategy == "constant" and value is None:
        return [loaded.problem((*key, "strategy"), "constant needs a value", "add value: V")]
    if strategy not in (None, "constant") and value is not None:
        hint = "set strategy: constant, or remove value"
        return [loaded.problem((*key, "value"), f"is used only by constant, not {strategy}", hint)]
    if strategy != "constant" or not isinstance(value, str):
        return []
    columns = [column] if column is not None else _section_columns(data)
    numeric = [name for name in columns if name not in data.categorical and name not in data.dates]
    if not numeric:
        return []
    problem = f"'{clip(value)}' is text but fills the numeric column '{clip(numeric[0])}'"
    return [loaded.problem((*key, "value"), problem, "use a number")]


def _section_columns(data: DataConfig) -> list[str]:
    """The features the section-wide strategy fills (those without their own)."""
    assert data.missing is not None
    own = data.missing.columns
    return [name for name in data.features if name not in own or own[name].strategy is None]
