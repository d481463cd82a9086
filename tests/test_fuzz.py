"""Issue 14's hostile-input fuzzer, a short budget: 25 generated configs and CSVs (mutations of the
shipped ones) through `check` and `train` in a memory-capped child, each keeping the contract.
`make fuzz` runs thousands (tests/fuzz_harness.py); these tests also pin the harness itself."""

from __future__ import annotations

from pathlib import Path

import fuzz_harness
import pytest
from fuzz_harness import Step, judge_step


def test_the_cases_of_a_seed_are_the_same_every_time() -> None:
    first = fuzz_harness.generate(seed=7, count=30)
    assert first == fuzz_harness.generate(seed=7, count=30)
    assert len({(case.config, case.data, case.overrides) for case in first}) == 30
    assert first != fuzz_harness.generate(seed=8, count=30)


def step(verb: str, code: int | None, err: str = "", seconds: float = 0.1) -> Step:
    return Step([verb, "config.yaml"], code, seconds, "", err, cpu_seconds=seconds)


@pytest.mark.parametrize(
    ("done", "expected"),
    [
        (step("check", 0), []),
        (step("check", 2, "Error: config.yaml:3: seed: expected an integer\n"), []),
        (step("train", 3, "Error: runs/x: the loss became nan at epoch 1\n"), []),
        (step("check", 1, "Error: internal error (KeyError); this is a bug\n"), ["exit 1: "]),
        (step("check", 4, "Error: out of memory; try a smaller batch_size\n"), ["exit 4: out of"]),
        (step("check", None, "[fuzz: ValueError escaped run_cli]\n"), ["an exception escaped"]),
        (step("check", 2, "Traceback (most recent call last):\nError: x\n"), ["traceback"]),
        (step("check", 2, "".join(f"Error: p{i}\n" for i in range(12))), ["more than 11 lines"]),
        (step("check", 2, "Error: a\nError: b\nError: c\nError: d\n"), []),
        (
            step("check", 2, "Error: c.yaml:9: k: unknown key\n" * 12),
            ["more than 11 lines on stderr: one"],
        ),
        (step("check", 2, ""), ["exit 2 without an 'Error: ' line"]),
        (step("train", 0, "Warning: plots not drawn (x); try again\n"), ["warning on stderr"]),
        (step("check", 2, "Error: a\nlibrary noise\n"), ["stray text on stderr"]),
        (step("check", 2, "Error: key '\u202eseed'\n"), ["raw control characters"]),
        (step("check", 2, "Error: " + "x" * 3000 + "\n"), ["a stderr line over"]),
        (step("check", 0, seconds=11), ["check over 10 s"]),
        (Step(["train", "c.yaml"], 0, 11, "", "", cpu_seconds=2), []),  # a busy machine
    ],
)
def test_the_judge_names_each_breach_of_the_contract(
    done: Step, expected: list[str], tmp_path: Path
) -> None:
    found = judge_step(done, tmp_path)
    assert len(found) == len(expected), found
    for kind, start in zip(found, expected, strict=True):
        assert kind.startswith(start), found


def test_a_run_folder_left_after_exit_2_is_a_breach(tmp_path: Path) -> None:
    (tmp_path / "runs" / "tiny" / "20260101-000000-abcdef").mkdir(parents=True)
    refused = step("train", 2, "Error: data.csv: line 3: not a number\n")
    assert judge_step(refused, tmp_path) == ["train exit 2 left a run folder"]


@pytest.mark.slow
def test_hostile_configs_and_csvs_keep_the_error_contract(tmp_path: Path) -> None:
    summary = fuzz_harness.campaign(cases=25, seed=0, out=tmp_path)
    assert summary.tried == 25
    if summary.violations:
        pytest.fail(summary.render(), pytrace=False)
