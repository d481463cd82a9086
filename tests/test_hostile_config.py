"""Issue 14, bounded and honest under hostile input: the config side and the messages.

The issue's examples run through tests/bounded.py (`mlpkit check` in a child under a memory
cap: exit 2, one error line, under 2 s and 600 MB; marked slow for the child's imports);
errors.py's rules for every message (escaped, cut, summarised) and did-you-mean's bound run in
process.
"""

from __future__ import annotations

import time

import pytest
from bounded import Bounded, assert_contract, run_bounded
from conftest import Project

from mlpkit.errors import (
    FIELD_LIMIT,
    SHOWN,
    ConfigError,
    MlpkitError,
    Problem,
    clip,
    did_you_mean,
    escaped,
    listed,
    one_line,
)

# --- the examples, end to end ---------------------------------------------------------


def check(project: Project, config: str) -> Bounded:
    project.write_config(config)
    result = run_bounded("check", project.config, cwd=project.root)
    print(f"{result.seconds:.3f} s, {result.peak_mb:.0f} MB")  # shown with pytest -s
    return result


def laughs() -> str:
    """The billion laughs: 9 levels of 9 aliases, 387,420,489 x's once expanded."""
    lines = ["a: &a [" + ", ".join(["x"] * 9) + "]"]
    lines += [
        f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.slow  # a fresh interpreter importing torch: ~4 s
def test_a_billion_laughs_is_one_line_naming_the_limit(project: Project) -> None:
    # Was: no output, past 3 GB within 30 s (every alias expanded, a line kept per path).
    result = check(project, laughs())
    assert_contract(
        result, 2, f"Error: {project.config}:6: more than 100,000 values once aliases are ",
        "a config may hold at most 100,000 values",
    )  # fmt: skip
    assert result.seconds < 0.5


@pytest.mark.slow  # a fresh interpreter importing torch: ~4 s
def test_30000_repeated_feature_names_are_one_bounded_line(project: Project) -> None:
    # Was: 28 s (features.count per feature), and a line naming every feature.
    names = [f"feature_{i:05d}" for i in range(30_000)]
    features = "\n".join(f"    - {name}" for name in ["a", "b", "color", *names, *names])
    config = project.config.read_text().replace(
        "  features: [a, b, color]", "  features:\n" + features
    )
    result = check(project, config)
    assert_contract(
        result, 2, "data.features: lists 30,000 names more than once: 'feature_00000' twice, ",
        "'feature_00009' twice and 29,990 more; name each column once",
    )  # fmt: skip
    assert len(result.lines[0]) < 2000


@pytest.mark.slow  # a fresh interpreter importing torch: ~4 s
def test_terminal_escapes_in_a_config_key_are_shown_escaped(project: Project) -> None:
    # Was: ESC]0;...BEL (set the window title) and ESC[2J (clear the screen) sent raw.
    config = project.config.read_text() + '"\\e]0;pwned\\a\\e[2J": 1\n'
    result = check(project, config)
    assert_contract(result, 2, ":18: \\x1b]0;pwned\\x07\\x1b[2J: unknown key; expected one of: ")
    assert "\x1b" not in result.err and "\x07" not in result.err


@pytest.mark.slow  # a fresh interpreter importing torch: ~4 s
def test_a_120_kb_value_is_cut(project: Project) -> None:
    # Was: the whole value echoed in the error line.
    config = project.config.read_text().replace("name: tiny", "name: " + "x" * 120_000)
    result = check(project, config)
    assert_contract(
        result, 2, f"Error: {project.config}:1: name: string should have at most 100 characters",
        'got "xxxxxxxx', "... (119,802 more characters)",
    )  # fmt: skip
    assert len(result.lines[0]) < 500


@pytest.mark.slow  # a fresh interpreter importing torch: ~4 s
def test_a_60000_item_bad_list_is_one_line(project: Project) -> None:
    # Was: 60,000 error lines.
    items = ", ".join(str(i) for i in range(60_000))
    config = project.config.read_text().replace("[a, b, color]", f"[{items}]")
    result = check(project, config)
    assert_contract(
        result, 2, "data.features.0: expected text, got 0 (and likewise at data.features.1, ",
        "data.features.9 and 59,990 more); quote it ('0') to keep it as text",
    )  # fmt: skip


@pytest.mark.slow  # a fresh interpreter importing torch: ~4 s
def test_a_leading_zero_seed_is_refused(project: Project) -> None:
    # Was: seed 8, silently (YAML 1.1 octal).
    result = check(project, project.config.read_text().replace("seed: 0", "seed: 010"))
    assert_contract(
        result, 2, f"Error: {project.config}:2: seed: 010 has a leading zero",
        "write 10 for the number, or quote it ('010') for text",
    )  # fmt: skip


# --- every message: escaped, cut, summarised -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("csi\x9b2J nel\x85", "csi\\x9b2J nel\\x85"),
        ("abc\u202edcba\u2066", "abc\\u202edcba\\u2066"),
        ("line\u2028sep", "line\\u2028sep"),
        ("café ☃ C:\\tmp", "café ☃ C:\\tmp"),  # printable text and backslashes stay as they are
    ],
)
def test_control_characters_are_escaped(raw: str, shown: str) -> None:
    assert escaped(raw) == shown


def test_every_field_of_a_problem_is_escaped_onto_one_line() -> None:
    problem = Problem("bad\nvalue", file="f\x1b.yaml", line=3, where="k\x1b[2J", hint="fi\rx")
    assert problem.render() == "Error: f\\x1b.yaml:3: k\\x1b[2J: bad\\nvalue; fi\\rx"


def test_a_long_field_keeps_its_start_and_end() -> None:
    text = "start " + "x" * 10_000 + " end of the message"
    rendered = Problem(text).render()
    assert rendered.startswith("Error: start xxx")
    assert rendered.endswith("xxx end of the message")
    assert "... (9,705 more characters) ..." in rendered
    assert len(rendered) <= len("Error: ") + FIELD_LIMIT


def test_a_line_stays_short_whatever_its_fields_hold() -> None:
    huge = "\x1b" * 50_000  # each escapes to 4 characters
    line = Problem(huge, file=huge, line=1, where=huge, hint=huge).render()
    assert len(line) < 2000
    assert "\x1b" not in line


def test_a_short_field_is_whole() -> None:
    assert Problem("y" * FIELD_LIMIT).render() == "Error: " + "y" * FIELD_LIMIT


def test_many_problems_render_the_first_and_count_the_rest() -> None:
    error = ConfigError([Problem(f"problem {i}", file="c.yaml") for i in range(60_000)])
    lines = error.render().splitlines()
    assert lines[:2] == ["Error: c.yaml: problem 0", "Error: c.yaml: problem 1"]
    assert lines[SHOWN:] == [f"Error: ... and {60_000 - SHOWN:,} more problems"]
    assert one_line(error) == "Error: c.yaml: problem 0"
    exactly = MlpkitError([Problem(f"p{i}") for i in range(SHOWN)])
    assert len(exactly.render().splitlines()) == SHOWN


def test_clip_and_listed() -> None:
    assert clip("abc", 5) == "abc"
    assert clip("abcdefgh", 5) == "abcde... (3 more characters)"
    assert listed(["a", "b", "c"], 5) == "a, b, c"
    assert listed([str(i) for i in range(8)], 3) == "0, 1, 2 and 5 more"


# --- did-you-mean: linear in the choices, a bounded list --------------------------------------


def test_did_you_mean_lists_a_bounded_number_of_choices() -> None:
    hint = did_you_mean("zzz", [f"c{i:03d}" for i in range(100)])
    assert hint == "expected one of: " + ", ".join(f"c{i:03d}" for i in range(30)) + " and 70 more"


def test_did_you_mean_over_a_million_choices_is_fast() -> None:
    names = [f"feature_{i:06d}" for i in range(1_000_000)]
    started = time.process_time()
    assert did_you_mean("FEATURE_999999", names).startswith("did you mean 'feature_999999'? ")
    assert did_you_mean("featur_000123", names).startswith("did you mean 'feature_000123'? ")
    assert time.process_time() - started < 6  # ~1.3 s each here; difflib over all: minutes


def test_did_you_mean_still_finds_a_near_name_among_few() -> None:
    assert did_you_mean("rleu", ["elu", "relu", "tanh"]).startswith("did you mean 'relu'? ")
    assert (
        did_you_mean("Relu", ["elu", "relu"]) == "did you mean 'relu'? expected one of: elu, relu"
    )
