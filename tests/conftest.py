from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# as chanscope does before torch loads OpenMP: idle threads sleep, so the suite keeps its pace on a CPU that
# other jobs share (spinning threads made a small forward-backward 50x slower beside two other jobs)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as chanscope/__init__.py

import pytest  # noqa: E402
import torch  # noqa: E402

from chanscope.data import load_data

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(2)
# decoded-archive cache of the test session: never the user's ~/.cache, and removed at exit
os.environ["CHANSCOPE_CACHE"] = tempfile.mkdtemp(prefix="chanscope-cache-")
atexit.register(shutil.rmtree, os.environ["CHANSCOPE_CACHE"], True)


@pytest.fixture(scope="session")
def embedded():
    """The embedded real CIFAR-10 subset (decoded once per session)."""
    return load_data("embedded")


@pytest.fixture(scope="session")
def cifar_batch(embedded):
    x = embedded.x_test[::50][:16].float() / 255
    y = embedded.y_test[::50][:16]
    return x, y
