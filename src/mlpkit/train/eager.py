"""Keep torch._dynamo out of a run that never compiles (about a second of every run).

torch wraps four Optimizer methods (add_param_group, which the constructor calls, state_dict,
load_state_dict and zero_grad) in torch._disable_dynamo: on its first call the wrapper imports
torch._dynamo (measured 1.1 s on this machine, torch 2.13) to build a "do not compile this"
version of the method, and caches it on the method as `__dynamo_disable`. mlpkit never compiles,
and outside compilation that version runs the method unchanged, so `skip_dynamo_import` fills
the cache with the method itself. Idempotent; if a later torch renames the cache, the wrapper
simply imports torch._dynamo as before (tests/test_startup.py would then say so). optimizer
.step() still imports it (torch's _use_grad): the autograd engine pays it, the direct engine,
which updates parameters with the fused kernel itself, does not.
"""

from __future__ import annotations

import torch

WRAPPED = ("add_param_group", "state_dict", "load_state_dict", "zero_grad")


def skip_dynamo_import() -> None:
    """Fill torch's disable-dynamo cache of the Optimizer methods with the methods themselves."""
    for name in WRAPPED:
        raw = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if raw is not None and getattr(raw, "__dynamo_disable", None) is None:
            setattr(raw, "__dynamo_disable", raw)
