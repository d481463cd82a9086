"""mlpkit's errors: every expected failure is an MlpkitError that renders as one line per problem.

Hierarchy (the CLI catches only the base class; anything else is a bug, exit 1):

    MlpkitError            exit 2  something the user can fix
    ├── ConfigError        exit 2  the YAML file or a --set override
    ├── DataError          exit 2  the data table
    ├── RunDirError        exit 2  a run directory that is missing, foreign or incomplete
    ├── DeviceError        exit 2  a device that is not available
    ├── DivergedError      exit 3  a non-finite loss
    ├── Interrupted        exit 130 / 143  SIGINT / SIGTERM (a checkpoint saved, the run
    │                                       marked interrupted)
    └── EnvironmentFault   exit 4  disk full, permission denied, out of memory

A line reads `Error: <file>[:<line>]: <where>: <problem>[; <hint>]`, where <where> is a dotted
config path (`training.optimizer.lr`) or a column and line (`column 'x', line 7`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong, located as precisely as we can."""

    problem: str
    file: str | None = None
    line: int | None = None
    where: str | None = None
    hint: str | None = None

    def render(self) -> str:
        location = self.file or ""
        if location and self.line is not None:
            location += f":{self.line}"
        parts = [p for p in (location, self.where, self.problem) if p]
        text = ": ".join(parts)
        line = f"Error: {text}; {self.hint}" if self.hint else f"Error: {text}"
        return " ".join(line.split())  # one line, whatever a library's message held


class MlpkitError(Exception):
    """An expected failure, carrying one or more problems found together."""

    exit_code = 2

    def __init__(self, problems: Problem | Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = (
            (problems,) if isinstance(problems, Problem) else tuple(problems)
        )
        if not self.problems:
            raise ValueError("an MlpkitError needs at least one problem")
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)


class ConfigError(MlpkitError):
    """The config file or an override is wrong."""


class DataError(MlpkitError):
    """The data table does not match what the config asks of it."""


class RunDirError(MlpkitError):
    """A path given as a run directory is not a usable run."""


class DeviceError(MlpkitError):
    """The requested device is not available on this machine."""


class DivergedError(MlpkitError):
    """Training produced a non-finite loss."""

    exit_code = 3


class Interrupted(MlpkitError):
    """Training was stopped by a signal: exit 128 + its number (130 for SIGINT, 143 SIGTERM)."""

    def __init__(self, problems: Problem | Sequence[Problem], signal_number: int = 2) -> None:
        super().__init__(problems)
        self.exit_code = 128 + signal_number


class EnvironmentFault(MlpkitError):
    """The machine failed us: disk full, permission denied, out of memory."""

    exit_code = 4


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint naming the closest valid choice (case aside) and listing them all."""
    options = sorted(choices)
    listed = "expected one of: " + ", ".join(options)
    by_case = {option.lower(): option for option in options}
    close = difflib.get_close_matches(word.lower(), list(by_case), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{by_case[close[0]]}'? {listed}"
    return listed


def one_line(exc: BaseException) -> str:
    """Any exception as one line: ours as we render them, another as Python's last line."""
    if isinstance(exc, MlpkitError):
        return exc.problems[0].render()
    import traceback  # only on a failure path

    return traceback.format_exception_only(exc)[-1].strip() or type(exc).__name__
