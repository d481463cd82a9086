import gzip
import io
import lzma
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Project, tiny_csv

from mlpkit.config.load import load_config
from mlpkit.data.table import read_table, split_rows
from mlpkit.errors import DataError
from mlpkit.reading import size_text


def data_errors(project: Project, csv: str | bytes) -> list[str]:
    if isinstance(csv, bytes):
        project.data.write_bytes(csv)
    else:
        project.data.write_text(csv)
    loaded = load_config(project.config)
    with pytest.raises(DataError) as caught:
        read_table(loaded.data_path, loaded.config.data, loaded)
    return caught.value.render().splitlines()


GOOD_ROWS = "1.0,2.0,red,3.0\n2.0,1.0,blue,4.0\n"


def test_reads_and_converts(project: Project) -> None:
    loaded = load_config(project.config)
    table = read_table(loaded.data_path, loaded.config.data, loaded)
    assert table.n_rows == 50
    assert table.frame["a"].dtype == np.float64
    assert set(table.frame["color"]) == {"red", "green", "blue"}
    assert len(table.sha256) == 64


def test_missing_column_with_did_you_mean(project: Project) -> None:
    lines = data_errors(project, "a,bb,colour,y\n" + GOOD_ROWS)
    assert lines == [
        f"Error: {project.data}: 2 columns missing from the header: 'b' (did you mean 'bb'?), "
        "'color' (did you mean 'colour'?)"
    ]


def test_non_numeric_cell_names_first_line_and_count(project: Project) -> None:
    lines = data_errors(project, "a,b,color,y\n1,2,red,3\n1,?,red,3\n1,x,red,3\n")
    assert lines == [
        f"Error: {project.data}: column 'b', line 3: non-numeric value '?' (2 cells); "
        "expected a number, or list 'b' in data.categorical to one-hot encode it"
    ]
    lines = data_errors(project, "a,b,color,y\n1,2,red,3\n1,2,red,n/a?\n")
    assert lines == [
        f"Error: {project.data}: column 'y', line 3: non-numeric value 'n/a?'; "
        "expected a number (a regression target; for class labels set data.task)"
    ]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("1,,red,3", "column 'b', line 3: missing value; to fill them"),
        ("1,NaN,red,3", "column 'b', line 3: missing value"),
        ("1,inf,red,3", "column 'b', line 3: infinite value; expected a finite number"),
        ("1,2,,3", "column 'color', line 3: missing value"),
        ("1,2,red,abc", "column 'y', line 3: non-numeric value 'abc'"),
        ("1,2,red", "line 3: has 3 fields, expected 4 like the header (1 row so)"),
        ("1,2,red,3,9", "line 3: has 5 fields, expected 4 like the header (1 row so)"),
        ("1,2,red,1e39", "column 'y', line 3: value beyond float32's range"),
        ('1,2,red,"3', "line 3: malformed CSV: unexpected end of data"),
    ],
)
def test_bad_cells(project: Project, row: str, expected: str) -> None:
    lines = data_errors(project, "a,b,color,y\n1,2,red,3\n" + row + "\n")
    assert len(lines) == 1
    assert expected in lines[0]


def test_empty_header_only_and_encoding(project: Project) -> None:
    assert "the file is empty" in data_errors(project, "")[0]
    assert "the file has a header but no rows" in data_errors(project, "a,b,color,y\n")[0]
    latin = "a,b,color,y\n1,2,rouge\xe9,3\n".encode("latin-1")
    assert data_errors(project, latin) == [
        f"Error: {project.data}: line 2: the file is not valid utf-8 text; "
        "set data.encoding, e.g. latin-1"
    ]


def test_trailing_commas_never_shift_columns(project: Project) -> None:
    # pandas would take the first column as an index here and shift every column by one.
    lines = data_errors(project, "a,b,color,y\n1,2,red,3,\n4,5,blue,6,\n")
    assert lines == [
        f"Error: {project.data}: line 2: has 5 fields, expected 4 like the header (2 rows so); "
        "every row ends with an empty extra field: remove the trailing commas"
    ]


def test_duplicate_header_names_are_refused(project: Project) -> None:
    assert data_errors(project, "a,b,color,y,y\n1,2,red,3,4\n") == [
        f"Error: {project.data}: column 'y': the header names it 2 times (fields 4, 5); "
        "rename the copies"
    ]


def test_line_numbers_are_physical_lines(project: Project) -> None:
    # a blank line and a quoted field spanning two lines come before the bad cell on line 6
    csv_text = 'a,b,color,y\n\n1,2,"red\nish",3\n1,2,red,3\n1,x,red,3\n'
    assert "column 'b', line 6: non-numeric value 'x'" in data_errors(project, csv_text)[0]


def test_header_spaces_bom_and_na_categories(project: Project) -> None:
    project.data.write_bytes("\ufeffa , b,color,y\n1,2,NA,3\n4,5,red,6\n".encode())
    loaded = load_config(project.config)
    table = read_table(loaded.data_path, loaded.config.data, loaded)
    assert list(table.frame["color"]) == ["NA", "red"]  # "NA" can be a category
    assert list(table.lines) == [2, 3]


def test_encoding_problems(project: Project) -> None:
    utf16 = data_errors(project, b"a,b,color,y\n1,2,red,3\n" + b"\xff\xfe")
    assert "the file is not valid utf-8 text" in utf16[0]
    project.edit_config("  target: y", "  target: y\n  encoding: klingon")
    assert data_errors(project, "a,b,color,y\n1,2,red,3\n") == [
        f"Error: {project.config}:6: data.encoding: unknown encoding 'klingon'; e.g. utf-8 or latin-1"
    ]


def test_missing_data_file_names_config_key_and_both_paths(project: Project) -> None:
    project.data.unlink()
    loaded = load_config(project.config)
    with pytest.raises(DataError) as caught:
        read_table(loaded.data_path, loaded.config.data, loaded)
    assert caught.value.render() == (
        f"Error: {project.config}:4: data.path: data file not found: {project.data}; "
        f"data.path 'data.csv' is relative to {project.root}/"
    )


def test_absolute_data_path_gets_no_relative_hint(project: Project) -> None:
    missing = project.root / "elsewhere.csv"
    loaded = load_config(project.config, [f"data.path={missing}"])
    with pytest.raises(DataError) as caught:
        read_table(loaded.data_path, loaded.config.data, loaded)
    assert caught.value.render() == f"Error: --set: data.path: data file not found: {missing}"


def _zipped(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", text)
    return buffer.getvalue()


def _parquet(text: str) -> bytes:
    buffer = io.BytesIO()
    pd.read_csv(io.StringIO(text)).to_parquet(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("packed", "expected"),
    [
        (
            lambda text: gzip.compress(text.encode()),
            "a gzip file, not CSV text; decompress it first (gunzip)",
        ),
        (
            _zipped,
            "a zip file, not CSV text; unzip it first (an .xlsx workbook is one too: save it as "
            "CSV)",
        ),
        (
            lambda text: lzma.compress(text.encode()),
            "an xz file, not CSV text; decompress it first (unxz)",
        ),
        (
            _parquet,
            "a Parquet file, not CSV text; name it .parquet (or .pq) to read it as Parquet",
        ),
        (
            lambda text: bytes(range(256)) * 8,
            "binary data, not CSV text; expected CSV text with a header line",
        ),
    ],
    ids=["gzip", "zip", "xz", "parquet", "binary"],
)
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_a_file_that_is_not_text_says_what_it_looks_like(
    project: Project, packed: Callable[[str], bytes], expected: str, encoding: str
) -> None:
    # whatever data.encoding says: following an encoding hint would only give another error
    project.edit_config("  target: y", f"  target: y\n  encoding: {encoding}")
    assert data_errors(project, packed(tiny_csv())) == [
        f"Error: {project.data}: looks like {expected}"
    ]


def test_text_in_another_encoding_keeps_the_encoding_hint(project: Project) -> None:
    utf16 = "a,b,color,y\n1,2,red,3\n".encode("utf-16")  # a byte-order mark, then NUL bytes
    assert data_errors(project, utf16) == [
        f"Error: {project.data}: line 1: the file is not valid utf-8 text; "
        "set data.encoding, e.g. latin-1"
    ]
    project.edit_config("  target: y", "  target: y\n  encoding: utf-16")
    loaded = load_config(project.config)
    assert read_table(loaded.data_path, loaded.config.data, loaded).n_rows == 1
    project.data.write_bytes("a,b,color,y\n1,2,red,3\n".encode("utf-16-le"))  # no mark
    assert read_table(loaded.data_path, loaded.config.data, loaded).n_rows == 1


def test_a_file_too_large_to_read_whole_points_at_streaming(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = project.data.stat().st_size
    monkeypatch.setattr("mlpkit.reading.available_memory", lambda: 10 * size)  # < 16x
    loaded = load_config(project.config)
    with pytest.raises(DataError) as caught:
        read_table(loaded.data_path, loaded.config.data, loaded)
    assert caught.value.render() == (
        f"Error: {project.config}:4: data.path: is {size_text(size)}; reading it whole takes "
        f"about {size_text(16 * size)} of memory, more than the {size_text(10 * size)} "
        f"available: {project.data}; set data.stream: true to read it block by block"
    )
    monkeypatch.setattr("mlpkit.reading.available_memory", lambda: 16 * size)
    assert read_table(loaded.data_path, loaded.config.data, loaded).n_rows == 50


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (os.mkfifo, "is a FIFO (named pipe), not a regular file: {data}"),
        (
            lambda path: path.symlink_to("/dev/null"),
            "is a character device, not a regular file: /dev/null",  # data_path is resolved
        ),
        (
            os.mkdir,
            "is a directory, not a data file: {data}; data.path 'data.csv' is relative to {root}/",
        ),
    ],
    ids=["fifo", "device", "folder"],
)
def test_a_data_path_that_is_no_file_is_one_line(
    project: Project, make: Callable[[Path], object], expected: str
) -> None:
    project.data.unlink()
    make(project.data)
    loaded = load_config(project.config)
    with pytest.raises(DataError) as caught:
        read_table(loaded.data_path, loaded.config.data, loaded)
    assert caught.value.render() == (
        f"Error: {project.config}:4: data.path: "
        + expected.format(data=project.data, root=project.root)
    )


def test_split_is_a_function_of_the_seed(project: Project) -> None:
    data = load_config(project.config).config.data
    first, again, other = split_rows(50, data, 0), split_rows(50, data, 0), split_rows(50, data, 1)
    assert (len(first.train), len(first.val), len(first.test)) == (30, 10, 10)
    assert np.array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)
    everything = np.concatenate([first.train, first.val, first.test])
    assert sorted(everything) == list(range(50))


def test_mpg_csv_is_the_complete_uci_table() -> None:
    import pandas as pd

    frame = pd.read_csv(Path(__file__).parent.parent / "data" / "mpg.csv")
    assert list(frame.columns) == [
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
    assert len(frame) == 392
    assert not frame.isna().any().any()
    assert set(frame["origin"]) == {1, 2, 3}
