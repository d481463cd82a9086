"""A sweep's plots: Optuna's matplotlib views of the study, as PNGs in the sweep folder.

optimization_history.png (each trial's value and the best so far), param_importances.png
(fANOVA importances: needs two complete trials and a parameter that varied),
parallel_coordinate.png and slice.png. A view that cannot be drawn for this study (too few
trials) is left out with a line saying why; a failure to write is the command's.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpkit.errors import MlpkitError, one_line
from mlpkit.rundir import runs

if TYPE_CHECKING:
    import optuna

VIEWS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "parallel_coordinate.png": "plot_parallel_coordinate",
    "slice.png": "plot_slice",
}


def draw(study: optuna.Study, folder: Path) -> list[str]:
    """Write every view that can be drawn; return the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as views

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    folder.mkdir(exist_ok=True)
    written = []
    for name, view in VIEWS.items():
        try:
            drawn: Any = getattr(views, view)(study)
        except MlpkitError:
            raise
        except Exception as exc:  # too few trials for this view, a constant parameter...
            sys.stderr.write(f"Warning: {name} not drawn ({one_line(exc)})\n")
            continue
        axes = drawn.flat[0] if hasattr(drawn, "flat") else drawn  # slice: one per parameter
        figure = axes.figure
        figure.set_size_inches(8, 5)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close("all")
        runs.write_bytes(folder / name, buffer.getvalue())
        written.append(name)
    return written
