"""What a new user met in the first hour (issue: silent wrong answers, tracebacks, defaults, output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from chanscope.cli.app import app
from PIL import Image
from typer.testing import CliRunner

from chanscope.checkpoint import read_checkpoint, save_checkpoint
from chanscope.data import ImageData, load_data
from chanscope.errors import ChanscopeError
from chanscope.io import atomic_write_json
from chanscope.models import create_model
from chanscope.models.sources import load_model
from chanscope.observe.analysis import most_and_least_robust
from chanscope.train import build_config
from chanscope.train.config import default_preset
from chanscope.workflows import pipeline, plots, report
from chanscope.workflows.activations import ActivationOptions, run_activations, write_examples
from chanscope.workflows.evaluate import EvalOptions, default_attacks, run_eval
from chanscope.workflows.runs import match_classes
from chanscope.workflows.training import TrainInterrupted
from chanscope.workflows.training import fit as train

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
runner = CliRunner()


def _cli(*args):
    """The CLI writing to a pipe, as into a log file (without the COLUMNS that a test runner may export)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "chanscope.cli.app", *args], capture_output=True, text=True, env=env)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 10-class checkpoint that records CIFAR-10's class names, as `chanscope train` writes them."""
    path = tmp_path_factory.mktemp("tiny") / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_model("resnet10", width=0.0625).eval(), input_shape=[3, 32, 32], classes=CIFAR)
    return path


# ------------------------------------------------------------------------------ silent wrong answers
def _fake_study(out, options):
    """A study folder as `reproduce` leaves it: its record, with one finished stage."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"stages": {"train standard": {"seconds": 1.0, "command": "x", "kind": "train", "model": "standard"}},
              **options, "options": options, "scale_settings": json.loads(json.dumps(
                  pipeline.SCALES[options["scale"]].settings()))}
    (out / "pipeline.json").write_text(json.dumps(record))
    return (out / "pipeline.json").read_bytes()


def test_a_study_folder_refuses_options_it_was_not_made_with(tmp_path):
    made = {"scale": "smoke", "data": "embedded", "seed": 0, "bf16": None, "with_cas": False,
            "cifs_scratch": True}
    before = _fake_study(tmp_path / "s", made)
    for given, name in [({"data": "cifar10"}, "data"), ({"scale": "cpu"}, "scale"), ({"seed": 1}, "seed"),
                        ({"bf16": True}, "bf16"), ({"threat_model": "l2"}, "threat_model")]:
        with pytest.raises(ChanscopeError, match=f"made with {name} .*pick another `out`") as e:
            pipeline.reproduce(tmp_path / "s", **given)
        assert "\n" not in str(e.value)
        assert (tmp_path / "s" / "pipeline.json").read_bytes() == before  # nothing rewritten
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["pipeline.json"]
    # options left out are the folder's; turning on more models is allowed
    opts = pipeline.study_options(json.loads(before), {"seed": None, "with_cas": True})
    assert opts == {**made, "with_cas": True, "seeds": 1, "threat_model": "linf"}  # recorded before: L-inf
    # an archive given by another path to the same file is the same data
    arch = tmp_path / "d.tar.gz"
    arch.write_bytes(b"x")
    rec = {"stages": {"x": {}}, "options": {**made, "data": str(arch)}}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert pipeline.study_options(rec, {"data": "d.tar.gz"})["data"] == str(arch)
    finally:
        os.chdir(cwd)


def test_a_study_folder_refuses_runs_trained_with_another_recipe(tmp_path):
    """No pipeline.json (deleted), but the runs' config.json say how they were made: scale smoke, asked cpu."""
    run = tmp_path / "s" / "standard"
    run.mkdir(parents=True)
    cfg = build_config("smoke", **pipeline.SCALES["smoke"].train, method="standard", seed=0)
    (run / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    with pytest.raises(ChanscopeError, match=r"standard was trained with other options .*batch_size: run has 64, "
                                             "given 128"):
        pipeline.reproduce(tmp_path / "s", "cpu")
    res = runner.invoke(app, ["reproduce", "--scale", "cpu", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_class_names_must_match_or_be_mapped_explicitly(tiny, tmp_path):
    folder = tmp_path / "animals"  # 10 classes, other names than the model's
    for split in ("train", "test"):
        for i in range(10):
            (folder / split / f"kind{i}").mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(folder / split / f"kind{i}" / "0.png")
    with pytest.raises(ChanscopeError, match="trained on classes airplane, .*first difference: 'airplane' vs "
                                             "'kind0'.*`classes_by`='position'"):
        run_eval(str(tiny), EvalOptions(attacks="fgsm", data=str(folder), out=str(tmp_path / "o")))
    assert not (tmp_path / "o" / "eval.csv").exists()
    res = _cli("eval", "--model", str(tiny), "--data", str(folder), "--attacks", "fgsm", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "first difference" in _one_line(res.stderr)
    assert "(--classes-by position)" in _one_line(res.stderr)  # the CLI names its flag
    result, summary = run_eval(str(tiny), EvalOptions(attacks="fgsm", data=str(folder), out=str(tmp_path / "o"),
                                                           classes_by="position"))
    assert list(result.table["class"].unique()) == CIFAR + ["all"] and "by position" in summary["classes_note"]


def test_same_class_names_in_another_order_are_mapped_by_name():
    model = create_model("resnet10", width=0.0625)
    model.classes = ["a", "b", "c"]
    y = torch.tensor([0, 1, 2, 2])
    data = ImageData("d", "d", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), y.clone(),
                     torch.zeros(4, 3, 8, 8, dtype=torch.uint8), y.clone(), ["c", "a", "b"])
    note = match_classes(model, data)
    assert "mapped by name" in note and data.classes == ["a", "b", "c"]
    assert data.y_test.tolist() == [2, 0, 1, 1]  # data's c (0) is the model's 2, a (1) is 0, b (2) is 1
    plain = create_model("resnet10", width=0.0625)  # older checkpoints record no names: nothing changes
    assert match_classes(plain, data) is None


def test_at_with_natural_is_refused():
    with pytest.raises(ChanscopeError, match="natural training with method 'at' is method 'standard'"):
        build_config("smoke", method="at", natural=True)
    res = runner.invoke(app, ["train", "--method", "trades", "--natural", "--preset", "smoke"])
    assert res.exit_code == 2 and "is method 'standard'" in _one_line(res.output)
    assert build_config("smoke", method="cifs", natural=True).natural  # the warm start it is meant for


def _md_tables(text):
    """Every markdown table as a list of rows of cells; a malformed table has rows of different lengths."""
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_report_models_table_shows_widths_and_a_partial_study_is_well_formed(tmp_path):
    run = tmp_path / "at"
    run.mkdir()
    cfg = build_config("smoke", method="at", width=0.125)
    (run / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "data": {"n_train": 500}}))
    text = report.write_report([run], tmp_path / "report.md")
    models = _md_tables(text)[0]
    row = dict(zip(models[0], models[2]))
    assert row["width"] == "0.125" and row["epochs"] == "0/3", row
    for t in _md_tables(text):
        assert len({len(r) for r in t}) == 1, t
    empty = report.write_report([], tmp_path / "empty.md")  # a --time-limit that ended before any training
    assert "No model has been trained yet" in empty and all(len({len(r) for r in t}) == 1
                                                             for t in _md_tables(empty))


def _study_run(path, adv_acc):
    """A run folder with the activations stage's two tables (3 channels per class)."""
    path.mkdir(parents=True)
    rows = [{"layer": "x", "class": c, "class_name": CIFAR[c], "channel": k, "relevance": k - 1.0,
             "pr_nr": "NR" if k == 0 else "PR", "mag_nat": 1.0 + k, "mag_adv": 1.5 + k * c / 10, "std_nat": 0,
             "std_adv": 0, "freq_nat": 1, "freq_adv": 1, "n": 30} for c in range(10) for k in range(3)]
    pd.DataFrame(rows).to_csv(path / "channels.csv", index=False)
    cl = pd.DataFrame({"layer": "x", "class": range(10), "class_name": CIFAR, "n": 30, "nat_acc": 80.0,
                       "adv_acc": adv_acc, "cosine_adv_nat": 0.9, "mean_abs_gap": 0.1, "nr_over_abs": 0.1,
                       "nr_over_rel": 0.1, "pr_under_abs": 0.0, "pr_under_rel": 0.0, "spearman_nat": 0.5,
                       "spearman_adv": 0.4, "n_pr": 2, "n_nr": 1})
    cl.to_csv(path / "classes.csv", index=False)
    (path / "activations.json").write_text(json.dumps({"data": {"n_used": 300}, "attack": {"name": "pgd10"}}))
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 3)
    write_examples(path / "examples.npz", {"y": y, "nat_ok": np.ones(30, int), "adv_ok": rng.integers(0, 2, 30),
                                           "mag_nat": rng.random((30, 3)), "mag_adv": rng.random((30, 3)),
                                           "relevance": np.tile([-1.0, 0.5, 1.0], (10, 1))})


def test_figure_and_report_pick_the_same_classes_from_the_same_images(tmp_path, monkeypatch, draws):
    adv = [30.0, 20.0, 10.0, 40.0, 53.3, 25.0, 35.0, 45.0, 50.0, 53.3]  # deer and truck tie for most robust
    _study_run(tmp_path / "at", adv)
    assert most_and_least_robust(pd.read_csv(tmp_path / "at" / "classes.csv")) == ("deer", "bird")
    titles = []
    real = plots._save

    def keep_titles(fig, out, name, data):
        titles.extend(ax.get_title() for ax in fig.axes)
        titles.append(fig._suptitle.get_text())
        return real(fig, out, name, data)

    monkeypatch.setattr(plots, "_save", keep_titles)
    drawn = plots.class_alignment(tmp_path / "at", tmp_path / "fig")
    assert set(drawn.class_name) == {"deer", "bird"}
    assert titles[0].startswith("deer") and "300 test images, pgd10 (activations)" in titles[-1]
    draws(n_boot=50, n_perm=50)
    obs = report.observations({"at": tmp_path / "at"})
    three = next(o for o in obs if o["observation"].startswith("3."))
    assert "most robust deer (53.3%" in three["numbers"] and "least robust bird" in three["numbers"]


# ------------------------------------------------------------------------------------ crashes, tracebacks
def test_ctrl_c_during_reproduce_is_one_line_and_says_how_to_continue(tmp_path, monkeypatch):
    import chanscope.cli.reproduce as cli_reproduce

    def interrupted(out, scale, *, on_stage, **kw):
        on_stage("train at", "running", 0.0)
        raise TrainInterrupted("interrupted in epoch 2; state saved")

    monkeypatch.setattr(cli_reproduce, "reproduce", interrupted)
    res = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "s")])
    text = _one_line(res.output)
    assert res.exit_code == 130 and "interrupted during 'train at'" in text and "run the same command again" in text
    assert "Traceback" not in res.output

    def killed(out, scale, *, on_stage, **kw):
        on_stage("eval at", "running", 0.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_reproduce, "reproduce", killed)
    res = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "s")])
    assert res.exit_code == 130 and "during 'eval at'" in _one_line(res.output)


def test_torchscript_and_exported_files_are_named_not_called_corrupt(tmp_path):
    lin = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(lin), tmp_path / "ts.pt")
    torch.export.save(torch.export.export(lin, (torch.rand(1, 3),)), tmp_path / "ep.pt2")
    for name, kind in (("ts.pt", "a TorchScript file"), ("ep.pt2", "an exported program")):
        with pytest.raises(ChanscopeError, match=f"is {kind}") as e:
            read_checkpoint(tmp_path / name)  # where weights are asked for (`init`, `weights`)
        assert "corrupt" not in str(e.value)
    assert load_model(tmp_path / "ts.pt", "cpu")(torch.rand(2, 3)).shape == (2, 2)  # as a model: opened
    with pytest.raises(ChanscopeError, match="exported with a fixed batch of 1"):
        load_model(tmp_path / "ep.pt2", "cpu")


def test_fashion_mnist_files_in_the_wrong_folder_get_the_layout(tmp_path):
    for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(ChanscopeError, match=r"expects .*FashionMNIST/raw/.* are in .* itself: move them into"):
        load_data("fashion-mnist", str(tmp_path))


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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_keep_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == mode


def test_resume_of_a_finished_run_keeps_its_summary(tmp_path):
    cfg = build_config("smoke", method="standard", arch="resnet10", width=0.0625, subset=100, epochs=1,
                       eval_n=10, eval_steps=1)
    train(cfg, tmp_path / "r")
    before = (tmp_path / "r" / "summary.json").read_bytes()
    train(cfg, tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "summary.json").read_bytes() == before


def test_eval_csv_holds_percentages_without_float_noise(tiny, tmp_path):
    result, _ = run_eval(str(tiny), EvalOptions(attacks="fgsm", n=30, out=str(tmp_path)))
    text = (tmp_path / "eval.csv").read_text()
    for col in ("natural_acc", "robust_acc"):
        for v, row in zip(result.table[col], result.table.itertuples()):
            k = round(v * row.n / 100)
            assert v == round(100 * k / row.n, 2)  # a count of images over n, two decimals
    assert "0000" not in text.replace("0.0000", "")  # no 60.00000238418579


@pytest.mark.slow  # long: runs in `pytest -m slow`
def test_off_a_terminal_progress_is_plain_lines_and_tables_are_not_cut(tiny, tmp_path):
    res = _cli("eval", "--model", str(tiny), "--attacks", "fgsm,pgd2", "--n", "20", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("pgd2: 20/20 (100%)") for line in lines), res.stdout
    assert "…" not in res.stdout and "airplane" in res.stdout  # rich cuts cells to fit 80 columns


def test_line_progress_prints_first_interval_and_final_lines():
    from io import StringIO

    from chanscope.cli._console import LineProgress
    from rich.console import Console

    buf = StringIO()
    bar = LineProgress(Console(file=buf, width=200), every=3600)
    t = bar.add_task("images", total=100, info="")
    for done in range(0, 101, 10):
        bar.update(t, completed=done)
    out = buf.getvalue().splitlines()
    assert len(out) == 2 and out[0].startswith("images: 0/100") and out[1].startswith("images: 100/100 (100%)")
    buf.truncate(0)
    buf.seek(0)
    bar = LineProgress(Console(file=buf, width=200), every=0)
    t = bar.add_task("images", total=100, info="")
    bar.tasks[t]["t0"] -= 2.0  # two seconds in: an estimate from a rate, not from the first instant
    bar.update(t, completed=50)
    assert "eta 0:00:02" in buf.getvalue()


def test_training_figure_has_whole_epochs_and_a_panel_per_loss(tmp_path, monkeypatch):
    for name, loss in (("at", "ce"), ("cifs", "joint")):
        run = tmp_path / name
        run.mkdir()
        pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [2.3, 2.1, 2.0] if loss == "ce" else [6.8, 6.1, 5.7],
                      "train_acc": [20, 30, 35], "test_nat_acc": [20, 28, 33], "test_pgd_acc": [10, 15, 18]}
                     ).to_csv(run / "metrics.csv", index=False)
        (run / "config.json").write_text(json.dumps({"resolved": {"loss": loss}}))
    figs = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, *a: (figs.append(fig), real(fig, *a))[1])
    data = plots.training_curves([tmp_path / "at", tmp_path / "cifs"], tmp_path / "fig")
    fig = figs[0]
    titles = [ax.get_title() for ax in fig.axes]
    assert "training loss: cross-entropy" in titles and any(t.startswith("training loss: joint") for t in titles)
    assert set(data.loss_kind) == {"ce", "joint"}
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
        assert ax.get_legend() is None  # one legend for the figure, outside the panels
    assert len(fig.legends) == 1


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
