"""chanscope: channel-wise activation studies of adversarially trained CNNs (CIFS, Yan et al. 2021)."""

import os

# Idle OpenMP threads sleep instead of spinning. OpenMP reads this once, when torch first loads, so it is set
# before any torch import here (a process that imported torch earlier keeps its setting). On a CPU that other
# jobs share, spinning threads keep every parallel region waiting for a thread the scheduler has parked
# (docs/benchmarks.md, "Sharing the CPU"; bench/shared_cpu.py); a variable the user set is left alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from chanscope.checkpoint import load_model, save_checkpoint  # noqa: E402
from chanscope.errors import ChanscopeError  # noqa: E402
from chanscope.models import create_model, list_models  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load_model", "save_checkpoint", "create_model", "list_models", "ChanscopeError", "__version__"]
