import time
from typing import Any

import pytest
import yaml

from mlpkit.config import yamlfile
from mlpkit.config.yamlfile import MAX_DEPTH, MAX_VALUES, dump_yaml, parse_yaml
from mlpkit.errors import ConfigError

PARSERS = {"python": yamlfile._PythonLoader, "libyaml": getattr(yamlfile, "_LibyamlLoader", None)}


@pytest.fixture(autouse=True, params=sorted(PARSERS))
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both event sources: libyaml's and PyYAML's own."""
    loader = PARSERS[request.param]
    if loader is None:
        pytest.skip("PyYAML was built without libyaml")
    monkeypatch.setattr(yamlfile, "_Loader", loader)
    return str(request.param)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text, "c.yaml")
    return caught.value.render()


def test_exponent_without_dot_is_a_float() -> None:
    doc = parse_yaml("lr: 1e-3\nwd: 5E+2\nn: 10\nname: 1e-3x\n", "c.yaml")
    assert doc.data == {"lr": 0.001, "wd": 500.0, "n": 10, "name": "1e-3x"}
    assert isinstance(doc.data["lr"], float)


def test_plain_safe_loader_is_left_alone() -> None:
    # Our resolver is installed on a copy; PyYAML's own SafeLoader still reads 1e-3 as text.
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}


def test_lines_of_nested_keys_and_list_items() -> None:
    doc = parse_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n", "c.yaml")
    assert doc.lines[("a",)] == 1
    assert doc.lines[("a", "b")] == 2
    assert doc.lines[("a", "c", 1)] == 5
    assert doc.line_of(("a", "missing")) == 1


def test_duplicate_key_names_both_lines() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml("training:\n  epochs: 3\n  epochs: 5\n", "c.yaml")
    assert caught.value.render() == (
        "Error: c.yaml:3: training: duplicate key 'epochs' (also on line 2); keep one of them"
    )


def test_python_tags_are_refused_before_anything_runs() -> None:
    with pytest.raises(
        ConfigError,
        match=r"c.yaml:1: .*tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
    ):
        parse_yaml("x: !!python/object/apply:os.system ['touch /tmp/pwned']\n", "c.yaml")


def test_syntax_error_reports_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml("a: 1\nb: [1, 2\nc: 3\n", "c.yaml")
    message = caught.value.render()
    assert message.startswith("Error: c.yaml:3: invalid YAML, column")
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\0\n", "Error: c.yaml:1: control character U+0000 is not allowed in YAML"),
        ("? [a, b]\n: c\n", "Error: c.yaml:1: a key must be a plain name, not a list or mapping"),
        (
            "when: 2020-01-01\n",
            "Error: c.yaml:1: when: a date is not a config value; quote it to keep it as text",
        ),
        (
            "a: &b {x: 1}\nc:\n  <<: *b\n",
            "Error: c.yaml:3: c: merge keys (<<) are not supported; write the keys out",
        ),
    ],
)
def test_yaml_that_configs_cannot_hold(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text, "c.yaml")
    assert caught.value.render() == expected


def test_control_character_line_counts_characters_not_bytes() -> None:
    # libyaml reports a byte offset, PyYAML a character offset: both give line 3.
    assert error_of("a: café\nb: naïve\nc: x\0\n") == (
        "Error: c.yaml:3: control character U+0000 is not allowed in YAML"
    )


# --- bounds: values after alias expansion and nesting depth, counted without expanding -------


def laughs(levels: int, width: int = 9) -> str:
    """The billion laughs: each level a list of `width` aliases of the level before."""
    lines = ["a: &a [" + ", ".join(["x"] * width) + "]"]
    for level in range(1, levels):
        name, below = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{below}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_at_once_naming_the_limit() -> None:
    started = time.process_time()
    message = error_of(laughs(9))  # 9^9 = 387,420,489 x's once expanded
    assert time.process_time() - started < 0.5
    assert message == (
        "Error: c.yaml:6: more than 100,000 values once aliases are expanded; "
        "a config may hold at most 100,000 values (keys and items)"
    )


def test_the_count_is_exact_with_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two levels: a (1 + 3 items) + b (1 + 3 x 4) + 2 keys for a and b, 1 root = 4 + 13 + 3.
    text = laughs(2, width=3)
    monkeypatch.setattr(yamlfile, "MAX_VALUES", 20)
    assert parse_yaml(text, "c.yaml").data == {"a": ["x"] * 3, "b": [["x"] * 3] * 3}
    monkeypatch.setattr(yamlfile, "MAX_VALUES", 19)
    assert "more than 19 values" in error_of(text)


def test_a_plain_list_of_the_limit_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlfile, "MAX_VALUES", 1000)
    assert len(parse_yaml("[" + "1, " * 998 + "1]", "c.yaml").data) == 999  # + the list
    assert "more than 1,000 values" in error_of("[" + "1, " * 999 + "1]")


def test_deep_nesting_is_refused_naming_the_limit_not_a_recursion_error() -> None:
    assert error_of("[" * 100_000 + "]" * 100_000) == (
        "Error: c.yaml:1: nested deeper than 64 levels once aliases are expanded; "
        "a config may nest at most 64 levels"
    )
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_yaml(nested, "c.yaml").data is not None


def test_aliases_that_nest_deeper_than_the_limit_are_refused() -> None:
    # Each level is 10 deep in the file, 10 more than the level it repeats: 70 once expanded.
    ten = "[" * 10, "]" * 10
    lines = [f"a0: &a0 {ten[0]}1{ten[1]}"]
    lines += [f"a{i}: &a{i} {ten[0]}*a{i - 1}{ten[1]}" for i in range(1, 7)]
    assert "c.yaml:7: nested deeper than 64 levels" in error_of("\n".join(lines) + "\n")
    assert parse_yaml("\n".join(lines[:6]) + "\n", "c.yaml").data is not None


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {b: *a}\n"])
def test_an_alias_inside_its_own_anchor_is_refused(text: str) -> None:
    assert error_of(text) == (
        "Error: c.yaml:1: the alias *a names a value that holds it; "
        "an alias can repeat a finished value only: write the value out"
    )


def test_aliases_within_the_limits_load_with_the_anchors_lines() -> None:
    doc = parse_yaml("base: &b\n  units: 8\nlayers:\n  - *b\n  - *b\n", "c.yaml")
    assert doc.data == {"base": {"units": 8}, "layers": [{"units": 8}, {"units": 8}]}
    assert doc.data["layers"][0] is not doc.data["layers"][1]  # copies: an edit stays local
    assert doc.lines[("layers", 1)] == 5
    assert doc.lines[("layers", 1, "units")] == 2  # where the value is written


def test_a_feature_list_near_the_limit_parses_fast(parser: str) -> None:
    names = [f"feature_{i:06d}" for i in range(MAX_VALUES - 10)]
    text = "features:\n" + "".join(f"  - {name}\n" for name in names)
    started = time.process_time()  # CPU time: the machine may be busy with other work
    assert parse_yaml(text, "c.yaml").data == {"features": names}
    seconds = time.process_time() - started
    # ~0.3 / 1.4 s alone; more in a test process whose heap the collector walks
    assert seconds < (3.0 if parser == "libyaml" else 10.0), f"{seconds:.2f} s"
    assert "more than 100,000 values" in error_of(text + "".join(f"  - x{i}\n" for i in range(9)))


# --- YAML 1.2 scalars: what YAML 1.1 reads by surprise --------------------------------------


def test_only_true_and_false_are_booleans() -> None:
    doc = parse_yaml("a: [true, False, TRUE, yes, No, ON, off, y, n]\n", "c.yaml")
    assert doc.data == {"a": [True, False, True, "yes", "No", "ON", "off", "y", "n"]}
    assert parse_yaml("yes: 1\n", "c.yaml").data == {"yes": 1}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10", 10),
        ("-7", -7),
        ("0", 0),
        ("1_000", 1000),
        ("0x1F", 31),
        ("-0b101", -5),
        ("01.5", 1.5),
        ("-.5", -0.5),
        ("1e3", 1000.0),
        (".inf", float("inf")),
        ("1:30", "1:30"),
        ("=", "="),
        ("._", "._"),
        ("0b_", "0b_"),
        ("0x_", "0x_"),
    ],
)
def test_numbers_read_as_yaml_1_2_reads_them(text: str, value: Any) -> None:
    # `1:30` is not YAML 1.1's sexagesimal 90; `._` and `0b_` are text, not a crash.
    read = parse_yaml(f"v: {text}\n", "c.yaml").data["v"]
    assert read == value and type(read) is type(value)


@pytest.mark.parametrize(
    ("text", "expected", "quoted"),
    [
        (
            "seed: 010",
            "Error: c.yaml:1: seed: 010 has a leading zero: YAML 1.1 reads it as octal 8, "
            "YAML 1.2 as 10; write 10 for the number, or quote it ('010') for text",
            "seed: '010'",
        ),
        (
            "a: [1, -007]",
            "Error: c.yaml:1: a.1: -007 has a leading zero: YAML 1.1 reads it as octal -7, "
            "YAML 1.2 as -7; write -7 for the number, or quote it ('-007') for text",
            "a: [1, '-007']",
        ),
        (
            "id: 09",
            "Error: c.yaml:1: id: 09 has a leading zero: YAML 1.1 reads it as text, "
            "YAML 1.2 as 9; write 9 for the number, or quote it ('09') for text",
            'id: "09"',
        ),
    ],
)
def test_a_leading_zero_is_refused_showing_the_text(text: str, expected: str, quoted: str) -> None:
    assert error_of(text + "\n") == expected
    assert "0" in str(parse_yaml(quoted, "c.yaml").data)  # quoted, it is text


def test_the_written_text_of_scalars_that_are_not_text_is_kept() -> None:
    doc = parse_yaml("a: [FALSE, 0x10, 1_000, x, null]\nb: 1e-3\n", "c.yaml")
    assert doc.texts == {("a", 0): "FALSE", ("a", 1): "0x10", ("a", 2): "1_000", ("b",): "1e-3"}


def test_a_huge_duplicate_key_is_cut_and_escaped() -> None:
    key = '"\\e[2J' + "k" * 5000 + '"'  # over 1,024 characters: an explicit key (?)
    message = error_of(f"? {key}\n: 1\n? {key}\n: 2\n")
    assert message.startswith("Error: c.yaml:3: duplicate key '\\x1b[2Jkkk")
    assert "... (4,804 more characters)' (also on line 1); keep one of them" in message
    assert "\x1b" not in message


def test_dump_yaml_quotes_what_either_yaml_reads_as_no_text() -> None:
    value = {
        "texts": ["08", "-.5", "1e3", "010", "yes", "NO", "true", "1:30", "=", "0x1F", "x y"],
        "values": [8, -0.5, 1e-5, True, None, 0.001],
    }
    text = dump_yaml(value, sort_keys=False)
    assert "- '08'" in text and "- '-.5'" in text and "- 'yes'" in text and "- x y" in text
    assert parse_yaml(text, "run/config.yaml").data == value
    assert yaml.safe_load(text) == value  # and so does any YAML 1.1 reader
