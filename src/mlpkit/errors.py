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
        └── GroupLost      exit 4  a process of a data-parallel group stopped answering
                                    (the run marked interrupted, its last checkpoint kept)

A line reads `Error: <file>[:<line>]: <where>: <problem>[; <hint>]`, where <where> is a dotted
config path (`training.optimizer.lr`) or a column and line (`column 'x', line 7`).

Every message passes Problem.render, so the bounds on what reaches the terminal live there: a
control character in any field (from a data cell, a config key, a file name) is shown escaped
(`\\x1b`, `\\n`), never raw; a field longer than FIELD_LIMIT characters keeps its start and its
end around `... (N more characters) ...`; and an error with more than SHOWN problems renders the
first SHOWN and one line counting the rest. `clip` and `listed` cut values and lists where a
message is built, so the cut falls inside the value and the message around it stays whole.
"""

from __future__ import annotations

import difflib
import heapq
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

FIELD_LIMIT = 400  # characters of one field of a message, escaped; longer is cut in the middle
SHOWN = 10  # problems rendered in full; the rest are counted in one line
CLIPPED = 200  # characters of one value quoted into a message (`clip`)
LISTED = 30  # names a list in a message shows (`listed`)
COMPARED = 1000  # choices did-you-mean compares a word against at most

# C0 and C1 control characters and DEL, the line and paragraph separators, and the bidi
# controls that reorder what a terminal shows (CVE-2021-42574, "Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(text: str) -> str:
    r"""`text` with every control character shown as an escape (`\x1b`, `\n`, `\u202e`)."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clip(text: str, limit: int = CLIPPED) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def listed(names: Sequence[str], limit: int = LISTED) -> str:
    """Names joined by commas, the first `limit` of them and a count of the rest."""
    shown = ", ".join(clip(name, 60) for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit:,} more"


def _field(text: str | None) -> str:
    """One field of a message, escaped, and cut in the middle if that is over FIELD_LIMIT
    characters, so a line stays under 4 x FIELD_LIMIT + its separators whatever it holds."""
    if not text:
        return ""
    text = text.strip()
    if len(text) <= FIELD_LIMIT:
        shown = escaped(text)
        if len(shown) <= FIELD_LIMIT:
            return shown
    head = _fitting(text, FIELD_LIMIT * 3 // 5)
    tail = _fitting(reversed(text[head:]), FIELD_LIMIT // 5)
    more = len(text) - head - tail
    return f"{escaped(text[:head])}... ({more:,} more characters) ...{escaped(text[-tail:])}"


def _fitting(chars: Iterable[str], width: int) -> int:
    """How many of `chars` fit in `width` characters once escaped."""
    count = 0
    for char in chars:
        width -= len(escaped(char))
        if width < 0:
            break
        count += 1
    return count


@dataclass(frozen=True)
class Problem:
    """One thing wrong, located as precisely as we can."""

    problem: str
    file: str | None = None
    line: int | None = None
    where: str | None = None
    hint: str | None = None

    def render(self) -> str:
        """One line, whatever the fields hold: escaped and cut (see the module docstring)."""
        location = _field(self.file)
        if location and self.line is not None:
            location += f":{self.line}"
        text = ": ".join(p for p in (location, _field(self.where), _field(self.problem)) if p)
        hint = _field(self.hint)
        return f"Error: {text}; {hint}" if hint else f"Error: {text}"


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
        """A line per problem, the first SHOWN of them, then one line counting the rest."""
        lines = [p.render() for p in self.problems[:SHOWN]]
        if len(self.problems) > SHOWN:
            lines.append(f"Error: ... and {len(self.problems) - SHOWN:,} more problems")
        return "\n".join(lines)


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


class Pruned(MlpkitError):
    """A sweep's pruner stopped the trial's run at an epoch end (never reaches the CLI: the
    sweep records the trial as pruned and goes on)."""


class Interrupted(MlpkitError):
    """Training was stopped by a signal: exit 128 + its number (130 for SIGINT, 143 SIGTERM)."""

    def __init__(self, problems: Problem | Sequence[Problem], signal_number: int = 2) -> None:
        super().__init__(problems)
        self.exit_code = 128 + signal_number


class EnvironmentFault(MlpkitError):
    """The machine failed us: disk full, permission denied, out of memory."""

    exit_code = 4


class GroupLost(EnvironmentFault):
    """Another process of a torchrun group died or stopped answering (train/distributed.py):
    the collective it was needed for failed or timed out."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint naming the closest valid choice (case aside) and listing them (LISTED at most).

    Linear in the choices, whatever their number: see `closest`.
    """
    options = list(dict.fromkeys(choices))
    close = closest(word, options)
    first = sorted(options) if len(options) <= LISTED else heapq.nsmallest(LISTED, options)
    shown = listed(first)
    if len(options) > LISTED:
        shown += f" and {len(options) - LISTED:,} more"
    listing = "expected one of: " + shown
    return f"did you mean '{clip(close, 60)}'? {listing}" if close else listing


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice nearest to `word`: the same name in another case, else difflib's nearest.

    difflib costs ~30 us a choice, so it compares the word against at most COMPARED choices:
    those of a length it could match, in the order given. The rest is a pass over the choices
    (about a microsecond each): a header of a million columns gets its answer in a second, the
    case-insensitive match always, a near one if it is among the first COMPARED.
    """
    lower = word.lower()
    by_case = {option.lower(): option for option in reversed(choices)}  # the first one wins
    if lower in by_case:
        return by_case[lower]
    fits = (o.lower() for o in choices if 0.4 * len(o) <= len(word) <= 2.5 * len(o))
    candidates = list(dict.fromkeys(islice(fits, COMPARED)))
    close = difflib.get_close_matches(lower, candidates, n=1, cutoff=0.6)
    return by_case[close[0]] if close else None


def one_line(exc: BaseException) -> str:
    """Any exception as one line: ours as we render them, another as Python's last line."""
    if isinstance(exc, MlpkitError):
        return exc.problems[0].render()
    import traceback  # only on a failure path

    return traceback.format_exception_only(exc)[-1].strip() or type(exc).__name__


def warn(problems: tuple[Problem, ...]) -> None:
    """Each problem that does not stop the command as one `Warning:` line on stderr."""
    for problem in problems:
        sys.stderr.write(f"Warning: {problem.render().removeprefix('Error: ')}\n")
