from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from chanscope.accel.threads import share_cpu

# as the chanscope command does before torch loads OpenMP: idle threads sleep, so the suite keeps its pace on a
# CPU that other jobs share (spinning threads made a small forward-backward 50x slower beside two other jobs)
share_cpu()

import pytest  # noqa: E402
import torch  # noqa: E402

from chanscope.data import load_data  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # two workers: a core each
# the commands' output is read as whole lines: a wide console, as off a terminal (pytest-xdist's workers get
# COLUMNS=80, which wraps long paths)
os.environ["COLUMNS"] = "200"
# decoded-archive cache of the test session: never the user's ~/.cache, and removed at exit
os.environ["CHANSCOPE_CACHE"] = tempfile.mkdtemp(prefix="chanscope-cache-")
atexit.register(shutil.rmtree, os.environ["CHANSCOPE_CACHE"], True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 10-class checkpoint that records CIFAR-10's class names, as `chanscope train` writes them."""
    from _shared import CIFAR

    from chanscope.checkpoint import save_checkpoint
    from chanscope.models import create_model

    path = tmp_path_factory.mktemp("tiny") / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_model("resnet10", width=0.0625).eval(), input_shape=[3, 32, 32], classes=CIFAR)
    return path


@pytest.fixture(scope="session")
def embedded():
    """The embedded real CIFAR-10 subset (decoded once per session)."""
    return load_data("embedded")


@pytest.fixture(scope="session")
def cifar_batch(embedded):
    x = embedded.x_test[::50][:16].float() / 255
    y = embedded.y_test[::50][:16]
    return x, y


@pytest.fixture
def draws():
    """`draws(n_boot=, n_perm=)`: fewer bootstrap draws and permutations for the rest of one test, through
    `verdicts.draws` (the same code, no module global patched)."""
    from chanscope.observe import verdicts

    with contextlib.ExitStack() as stack:
        yield lambda n_boot=None, n_perm=None: stack.enter_context(verdicts.draws(n_boot, n_perm))


@pytest.fixture(autouse=True)
def _no_test_changes_the_tables():
    """The scales and the default draw counts are module state every later test reads: a test that changed
    them fails here (they are passed, or set for a block by `verdicts.draws`, never patched)."""
    from chanscope.observe import verdicts
    from chanscope.scales import SCALES

    before = dict(SCALES), verdicts.N_BOOT, verdicts.N_PERM
    yield
    assert (dict(SCALES), verdicts.N_BOOT, verdicts.N_PERM) == before, "a test changed SCALES or N_BOOT/N_PERM"
