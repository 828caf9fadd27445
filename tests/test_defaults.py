"""What a command does when an option is not given, and how its numbers are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _shared import one_line as _one_line
from chanscope.cli.app import app
from typer.testing import CliRunner

from chanscope.checkpoint import save_checkpoint
from chanscope.models import create_model
from chanscope.train.config import default_preset
from chanscope.workflows.activations import ActivationOptions, run_activations
from chanscope.workflows.evaluate import EvalOptions, default_attacks, run_eval

runner = CliRunner()


# --------------------------------------------------------------------------------------- defaults, output
def test_activations_default_is_a_subset_a_user_can_wait_for(tiny, tmp_path, monkeypatch):
    import chanscope.workflows.activations as act

    monkeypatch.setattr(act, "DEFAULT_N", 20)
    _, meta = run_activations(str(tiny), ActivationOptions(attack="fgsm", out=str(tmp_path)))
    assert meta["data"]["n_used"] == 20
    _, meta = run_activations(str(tiny), ActivationOptions(attack="fgsm", n=30, out=str(tmp_path)))
    assert meta["data"]["n_used"] == 30


def test_eval_defaults_to_the_attacks_that_fit_the_model(tmp_path):
    plain, cifs = create_model("resnet10", width=0.0625), create_model("resnet10", width=0.0625,
                                                                         feature_select="cifs")
    assert default_attacks(plain) == "fgsm,pgd20,cw20"
    assert default_attacks(cifs) == "fgsm,pgd20,cw20,adaptive20"
    assert default_attacks(create_model("resnet10", width=0.0625, feature_select="cas")).endswith("adaptive20")
    save_checkpoint(tmp_path / "c.pt", cifs.eval())
    result, _ = run_eval(str(tmp_path / "c.pt"), EvalOptions(n=10, out=str(tmp_path)))
    assert "adaptive20" in set(result.table.attack)
    assert "adaptive<K>" in _one_line(runner.invoke(app, ["eval", "--help"]).output)


def test_train_defaults_to_the_cpu_preset_on_a_cpu(tmp_path):
    assert default_preset("cpu") == "cpu"
    res = runner.invoke(app, ["train", "--method", "standard", "--subset", "100", "--epochs", "1", "--eval-n", "10",
                              "--width", "0.0625", "--arch", "resnet10", "--device", "cpu", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["preset"] == "cpu"
    assert "no --preset given: 'cpu'" in _one_line(res.output)


def test_eval_csv_holds_percentages_without_float_noise(tiny, tmp_path):
    result, _ = run_eval(str(tiny), EvalOptions(attacks="fgsm", n=30, out=str(tmp_path)))
    text = (tmp_path / "eval.csv").read_text()
    for col in ("natural_acc", "robust_acc"):
        for v, row in zip(result.table[col], result.table.itertuples()):
            k = round(v * row.n / 100)
            assert v == round(100 * k / row.n, 2)  # a count of images over n, two decimals
    assert "0000" not in text.replace("0.0000", "")  # no 60.00000238418579


def test_openmp_threads_sleep_when_idle_unless_the_user_says_otherwise():
    """Spinning OpenMP threads made a step 3.9x slower beside another job instead of about 2x (bench/shared_cpu.py):
    the chanscope command sets the passive wait policy before torch loads OpenMP and keeps a policy the user set;
    `import chanscope` sets nothing in the environment, `chanscope.share_cpu()` does what the command does."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")}
    show = "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OPENBLAS_NUM_THREADS'))"
    command = ("import os, sys; sys.argv = ['chanscope', '--version']; from chanscope.cli.app import main\n"
               f"try:\n    main()\nexcept SystemExit:\n    pass\n{show}")

    def run(code, **extra):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra})
        return r.stdout.strip().splitlines()[-1]

    assert run(f"import os, chanscope; {show}") == "None None"
    assert run(f"import os, chanscope; chanscope.share_cpu(); {show}") == "PASSIVE 1"
    assert run(command) == "PASSIVE 1"
    assert run(command, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE 1"

