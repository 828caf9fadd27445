"""The command starts light: help, --version and a bad flag need none of torch, pandas, matplotlib, seaborn or
scipy (each command imports its workflow when it runs), and the names its help shows are the library's."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "pandas", "matplotlib", "seaborn", "scipy")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chanscope.cli.app", *args], capture_output=True, text=True,
                          timeout=600)


def test_importing_the_cli_loads_no_heavy_library():
    code = (f"import sys, chanscope.cli.app; bad=[m for m in {HEAVY!r} if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_importing_the_package_loads_no_torch_and_its_api_still_resolves():
    code = ("import sys, chanscope, chanscope.errors; assert 'torch' not in sys.modules, 'torch at import'; "
            "from chanscope import ChanscopeError; assert ChanscopeError is chanscope.errors.ChanscopeError; "
            "assert 'torch' not in sys.modules, 'torch for ChanscopeError'; "
            "assert callable(chanscope.load_model) and 'resnet18' in chanscope.list_models(); "
            "assert set(chanscope.__all__) <= set(dir(chanscope))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_help_lists_the_commands_and_their_flags():
    r = _cli("--help")
    assert r.returncode == 0, r.stderr
    for command in ("train", "eval", "activations", "layers", "reproduce", "series", "compare", "report", "ablate",
                    "plot"):
        assert command in r.stdout
    assert "--version" in r.stdout and "--cpu-alloc" in r.stdout
    r = _cli("eval", "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--model", "--attacks", "--eps", "--sanity", "--weights", "--std"):  # own and model-source flags
        assert flag in r.stdout
    assert _cli("--version").stdout.strip().startswith("chanscope ")


def test_a_bad_flag_is_one_line_and_exit_code_2():
    r = _cli("eval", "--no-such-flag")
    assert r.returncode == 2 and "--no-such-flag" in r.stderr and "Traceback" not in r.stderr


def test_the_light_names_are_the_librarys():
    import chanscope.names as names
    from chanscope.observe.relevance import RELEVANCE_METHODS
    from chanscope.scales import SCALES
    from chanscope.train.config import METHODS
    from chanscope.workflows import pipeline
    from chanscope.workflows.compare import DEFAULT_METHODS
    from chanscope.workflows.series import DEFAULT_BUDGETS

    assert names.METHODS == METHODS == {"standard": ("none", "ce"), "at": ("none", "ce"),
                                        "trades": ("none", "trades"), "cas": ("cas", "joint"),
                                        "cifs": ("cifs", "joint"), "fsr": ("fsr", "fsr")}
    assert names.RELEVANCE_METHODS == RELEVANCE_METHODS == ("gradient", "grad-x-act", "ablation")
    assert names.DEFAULT_METHODS == DEFAULT_METHODS == "at,trades,cas,cifs,fsr"
    assert names.DEFAULT_BUDGETS == DEFAULT_BUDGETS == "5000x8x3,10000x10x4,10000x16x5"
    assert pipeline.SCALES is SCALES  # cli/reproduce.py's --scale help reads chanscope.scales


def test_the_cli_modules_import_the_same_names():
    import chanscope.cli.activations as activations
    import chanscope.cli.compare as compare
    import chanscope.cli.series as series
    import chanscope.cli.train as train

    from chanscope.observe.relevance import RELEVANCE_METHODS
    from chanscope.train import METHODS
    from chanscope.workflows.compare import DEFAULT_METHODS
    from chanscope.workflows.series import DEFAULT_BUDGETS

    assert train.METHODS is METHODS and activations.RELEVANCE_METHODS is RELEVANCE_METHODS
    assert compare.DEFAULT_METHODS is DEFAULT_METHODS and series.DEFAULT_BUDGETS is DEFAULT_BUDGETS
