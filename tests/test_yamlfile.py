import pytest
import yaml

from mlpkit.config.yamlfile import parse_yaml
from mlpkit.errors import ConfigError


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
