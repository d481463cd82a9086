"""The rules of data.dates that span several fields: each date column is a feature (not a
categorical one, not the target), names each part once, and a constant that fills its missing
cells is a date (text), not a number."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpkit.errors import Problem, clip, did_you_mean

if TYPE_CHECKING:  # load.py imports this module (through rules.py): named here, not imported
    from mlpkit.config.load import LoadedConfig


def date_problems(loaded: LoadedConfig) -> list[Problem]:
    """Every problem of data.dates, each at the key to change."""
    data = loaded.config.data
    features, categorical = set(data.features), set(data.categorical)
    problems: list[Problem] = []
    for column, parts in data.dates.items():
        key = ("data", "dates", column)
        if column not in features:
            hint = did_you_mean(column, data.features) or "list the column in data.features too"
            problems.append(loaded.problem(key, f"'{clip(column)}' is not in data.features", hint))
        elif column in categorical:
            problem = f"'{clip(column)}' is also in data.categorical"
            problems.append(loaded.problem(key, problem, "a column is a date or a category"))
        repeated = sorted({part for part in parts if parts.count(part) > 1})
        if repeated:
            problems.append(loaded.problem(key, f"lists '{repeated[0]}' twice"))
        if data.missing is not None and data.missing.strategy_for(column) == "constant":
            value = data.missing.value_for(column)
            if value is not None and not isinstance(value, str):
                where: tuple[str, ...] = ("data", "missing", "columns", column)
                if column not in data.missing.columns:
                    where = ("data", "missing", "value")
                problem = f"{value!r} fills the date column '{clip(column)}'"
                problems.append(loaded.problem(where, problem, "use an ISO date, e.g. 2024-01-31"))
    return problems
