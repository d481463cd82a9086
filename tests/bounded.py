"""Run one mlpkit command line in a fresh interpreter under a memory cap, and measure it.

Issue 14's bar for hostile input: the contract's exit code with one clear line, in under 2 s
and under 600 MB peak. The child imports mlpkit's heavy modules first (torch, pandas, and the
torch._dynamo that building any torch optimizer imports: seconds that every command pays and
that are not the input's doing), then caps its address space
at what it has mapped plus CAP_MB, so a runaway read or allocation fails fast instead of
swapping the machine, and times `run_cli` alone. Peak memory is the child's peak RSS, imports
included (VmHWM of the child itself).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CAP_MB = 600  # address space the command may add to what the imports mapped
PEAK_MB = 600  # the peak RSS a hostile input may cost, imports included
SECONDS = 2.0

CHILD = """\
import json, resource, sys, time
import numpy, pandas, torch  # noqa: F401  (the fixed cost every command pays; not timed)
from mlpkit.cli import run_cli
import mlpkit.flows.train, mlpkit.flows.check  # noqa: F401
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo, ~1 s
mapped = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
limit = mapped + {cap} * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
started = time.perf_counter()
code = run_cli(sys.argv[1:])
seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: a forked child's ru_maxrss starts at its parent's (pytest's) peak
peak = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
sys.stderr.flush()
print("\\n" + json.dumps({{"code": code, "seconds": seconds, "peak_mb": peak}}))
"""


@dataclass(frozen=True)
class Bounded:
    """How a capped command ended."""

    code: int
    seconds: float  # run_cli alone
    peak_mb: float  # peak RSS of the whole child
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """stderr's lines (a hostile input gets one)."""
        return self.err.splitlines()


def run_bounded(*args: str | Path, cwd: Path, timeout: float = 60) -> Bounded:
    """`mlpkit ARGS` in a child capped at CAP_MB more address space than its imports took."""
    child = CHILD.format(cap=CAP_MB)
    done = subprocess.run(
        [sys.executable, "-c", child, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out, _, last = done.stdout.rstrip("\n").rpartition("\n")
    try:
        report = json.loads(last)
    except json.JSONDecodeError:  # the child died (a crash, the cap): show what it said
        said = f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        raise AssertionError(f"exit {done.returncode}: {said}") from None
    return Bounded(report["code"], report["seconds"], report["peak_mb"], out, done.stderr)


def assert_contract(result: Bounded, code: int, *fragments: str) -> None:
    """The contract for hostile input: `code`, one line on stderr holding every fragment,
    within the time and memory bars."""
    assert result.code == code, result.err
    assert len(result.lines) == 1, result.err
    for fragment in fragments:
        assert fragment in result.lines[0], result.lines[0]
    assert result.seconds < SECONDS, f"{result.seconds:.2f} s"
    assert result.peak_mb < PEAK_MB, f"{result.peak_mb:.0f} MB"
