"""Produce data/mpg.csv and data/mpg-missing.csv once from the "cars" table bundled in the
PyPI package vega_datasets.

Run from the repository root (not part of mlpkit's runtime; vega_datasets is not a dependency):

    pip install vega_datasets==0.9.0 && python data/make_mpg.py

The bundled cars.json is the UCI auto-mpg table (406 cars). The 14 rows with no mpg or no
horsepower are dropped, leaving the 392 complete rows that the UCI page and the write-up use.
Origin is written with the UCI coding (1 USA, 2 Europe, 3 Japan) so it stays a numeric feature.
mpg-missing.csv keeps all 406 rows, a missing value as an empty cell: 8 cars without mpg and 6
without horsepower, the table as it comes (for data.missing).
"""

import csv
import json
from pathlib import Path

import vega_datasets

SOURCE = Path(vega_datasets.__file__).parent / "_data" / "cars.json"
TARGET = Path(__file__).parent / "mpg.csv"
WITH_MISSING = Path(__file__).parent / "mpg-missing.csv"
ORIGIN_CODES = {"USA": 1, "Europe": 2, "Japan": 3}
COLUMNS = [
    "mpg",
    "cylinders",
    "displacement",
    "horsepower",
    "weight",
    "acceleration",
    "model_year",
    "origin",
    "name",
]


def convert(car: dict) -> list:
    return [
        car["Miles_per_Gallon"],
        car["Cylinders"],
        car["Displacement"],
        car["Horsepower"],
        car["Weight_in_lbs"],
        car["Acceleration"],
        int(car["Year"][:4]) - 1900,  # "1970-01-01" -> 70, the UCI model_year
        ORIGIN_CODES[car["Origin"]],
        car["Name"],
    ]


def write(path: Path, cars: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")  # None is written as an empty cell
        writer.writerow(COLUMNS)
        writer.writerows(convert(c) for c in cars)


def main() -> None:
    cars = json.loads(SOURCE.read_text(encoding="utf-8"))
    complete = [
        c for c in cars if c["Miles_per_Gallon"] is not None and c["Horsepower"] is not None
    ]
    write(TARGET, complete)
    print(f"wrote {TARGET}: {len(complete)} rows from {len(cars)}")
    write(WITH_MISSING, cars)
    print(f"wrote {WITH_MISSING}: {len(cars)} rows")


if __name__ == "__main__":
    main()
