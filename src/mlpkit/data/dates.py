"""Date columns: ISO text to seconds since 1970-01-01 UTC, and seconds to the parts a model takes.

A date column is read as float64 seconds since 1970-01-01T00:00:00 UTC (NaN where missing);
preprocessing turns those into the parts data.dates names (year, month, day of week, ...), each
standardized like a numeric feature. `date_parts` is written with nothing but +, -, *, / and
floor division by constants, so one function computes the parts for numpy arrays (training, eval,
predict), torch tensors (the TorchScript export compiles it as it is) and ONNX nodes (the
export's expression wrapper): the three cannot drift apart. The calendar arithmetic is Howard
Hinnant's civil_from_days (proleptic Gregorian, exact in float64 for any year pandas reads).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # date_parts takes numpy arrays, torch tensors and ONNX nodes alike
    from typing import Any as Tensor  # noqa: F401 (used in date_parts' type comment)
    from typing import Dict  # noqa: F401, UP035 (TorchScript reads that comment: no dict[...])

    import pandas as pd  # imported where cells are parsed: date_parts needs none of it

# What a date cell may look like: a date, or a date and time (T or a space between), seconds
# and their fraction optional, and an optional UTC offset (Z or +HH:MM), taken into UTC.
ISO_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
EXPECTED = "expected an ISO date (2024-03-05) or date-time (2024-03-05T14:30:00), a real day"


def parse_dates(cells: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since 1970-01-01 UTC for stripped text cells ("" is left NaN and not bad), and
    which cells are not ISO dates; a datetime column (Parquet) is taken as it is, as UTC."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(cells.dtype):
        stamps = pd.to_datetime(cells, utc=True)
        return _seconds(stamps), np.zeros(len(cells), dtype=bool)
    text = cells.astype(str)
    shaped = text.map(lambda cell: ISO_DATE.fullmatch(cell) is not None).to_numpy(dtype=bool)
    empty = (text == "").to_numpy()
    stamps = pd.to_datetime(text.where(shaped), format="ISO8601", utc=True, errors="coerce")
    seconds = _seconds(stamps)
    return seconds, ~empty & np.isnan(seconds)


def _seconds(stamps: pd.Series) -> np.ndarray:
    """UTC timestamps (NaT: NaN) as float64 seconds since 1970-01-01, in microseconds first
    (pandas may hold them in seconds, micro- or nanoseconds, by the years they reach)."""
    naive = stamps.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    seconds = naive.astype(np.int64).astype(np.float64) / 1e6
    return np.where(stamps.isna().to_numpy(), np.nan, seconds)


def is_date_text(cells: pd.Series) -> bool:
    """Whether every cell (stripped text, at least one) looks like an ISO date and parses."""
    if cells.empty:
        return False
    seconds, bad = parse_dates(cells)
    return not bad.any() and not np.isnan(seconds).any()


def date_parts(seconds):
    # type: (Tensor) -> Dict[str, Tensor]
    """Every part of config.schema.DATE_PARTS for float64 seconds since 1970-01-01 UTC
    (numpy arrays, torch tensors or ONNX nodes).

    Only +, -, *, / and // with constants (see the module docstring); TorchScript compiles it
    with `seconds` as a Tensor.
    """
    day = 86400.0  # seconds (a literal: TorchScript takes no module constants)
    days = seconds // day
    time = seconds - days * day  # seconds into the day
    # civil_from_days: eras of 400 years from 0000-03-01, years from March (February last)
    z = days + 719468.0
    era = z // 146097.0
    day_of_era = z - era * 146097.0
    year_of_era = (
        day_of_era - day_of_era // 1460.0 + day_of_era // 36524.0 - day_of_era // 146096.0
    ) // 365.0
    day_from_march = day_of_era - (365.0 * year_of_era + year_of_era // 4.0 - year_of_era // 100.0)
    month_from_march = (5.0 * day_from_march + 2.0) // 153.0  # 0 March .. 11 February
    january_or_february = (month_from_march + 2.0) // 12.0  # 1 for months 10 and 11, else 0
    month = month_from_march + 3.0 - 12.0 * january_or_february
    year = year_of_era + era * 400.0 + january_or_february
    # days_from_civil of 1 January of `year` (a March-based year earlier): the day of the year
    before = year - 1.0
    before_era = before // 400.0
    before_year = before - before_era * 400.0
    january_first = (
        before_era * 146097.0
        + before_year * 365.0
        + before_year // 4.0
        - before_year // 100.0
        + 306.0
        - 719468.0
    )
    hour = time // 3600.0
    return {
        "year": year,
        "month": month,
        "day": day_from_march - (153.0 * month_from_march + 2.0) // 5.0 + 1.0,
        "day_of_week": (days + 3.0) - ((days + 3.0) // 7.0) * 7.0,  # Monday 0 (1970-01-01: 3)
        "day_of_year": days - january_first + 1.0,
        "hour": hour,
        "minute": (time - hour * 3600.0) // 60.0,
        "ordinal": seconds / day,  # days since 1970-01-01, the time as a fraction
    }
