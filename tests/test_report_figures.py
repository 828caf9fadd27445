"""The study report and the figures: what they say about their scale, their classes and their models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from _shared import CIFAR

from chanscope.models import create_model
from chanscope.observe.analysis import most_and_least_robust
from chanscope.train import build_config
from chanscope.workflows import plots, report
from chanscope.workflows.activations import write_examples


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


def test_smoke_report_says_what_its_scale_shows_and_flags_models_at_chance(tmp_path):
    """The report of a smoke study says it checks the pipeline, and a verdict reading a model at chance carries
    a warning (records made up: a model that predicts class 0 for every image)."""
    import numpy as np

    from chanscope.workflows.activations import write_examples
    from chanscope.workflows.records import StudyRecord
    from chanscope.workflows.report import _observation_lines, _scale_note, model_flags

    run = tmp_path / "cifs"
    run.mkdir()
    y = np.repeat(np.arange(10), 10)
    write_examples(run / "examples.npz", {"y": y, "nat_ok": (y == 0).astype(int), "adv_ok": np.zeros(100, int),
                                          "mag_nat": np.ones((100, 4), np.float32), "pred_nat": np.zeros(100, int),
                                          "mag_adv": np.ones((100, 4), np.float32),
                                          "relevance": np.ones((10, 4), np.float32)})
    flags = model_flags({"cifs": run})
    assert any("at chance" in f for f in flags["cifs"]) and any("1 class" in f for f in flags["cifs"])
    obs = [{"id": "4", "observation": "4. CIFS beats AT", "verdict": "holds", "rule": "r", "numbers": "n",
            "control": "c", "what it shows": "w"}]
    text = "\n".join(_observation_lines(obs, 2, flags, _scale_note(StudyRecord.from_dict({"scale": "smoke"}))))
    assert "**Warning**: cifs is at chance" in text and "say nothing about the paper" in text
    assert "Warning" not in "\n".join(_observation_lines(obs, 2, {}, None))


def test_training_figure_draws_adversarial_batch_accuracy_in_the_pgd_panel(tmp_path, monkeypatch):
    import json

    import pandas as pd

    from chanscope.workflows import plots

    for name, adv in (("standard", False), ("at", True)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"resolved": {"adversarial": adv, "loss": "ce"}}))
        pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.5], "train_acc": [11.0, 12.0] if adv else [61.0, 62.0],
                      "test_nat_acc": [40.0, 41.0], "test_pgd_acc": [20.0, 21.0]}).to_csv(run / "metrics.csv",
                                                                                        index=False)
    seen = {}
    real = plots._save

    def keep(fig, out, name, data):
        seen["axes"] = {ax.get_title(): [list(line.get_ydata()) for line in ax.get_lines()] for ax in fig.axes}
        return real(fig, out, name, data)

    monkeypatch.setattr(plots, "_save", keep)
    plots.training_curves([tmp_path / "standard", tmp_path / "at"], tmp_path / "fig")
    assert [11.0, 12.0] in seen["axes"]["PGD accuracy %"] and [11.0, 12.0] not in seen["axes"]["natural accuracy %"]
    assert [61.0, 62.0] in seen["axes"]["natural accuracy %"]


def test_python_api_plots_leave_no_temporary_folder_and_keep_the_models_mode(tmp_path, monkeypatch):
    import tempfile

    import chanscope

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    torch.manual_seed(0)
    net = create_model("resnet10", width=0.0625).train()
    s = chanscope.study(net, "embedded", attack="fgsm", n=20)
    assert net.training  # the mode it came in
    drawn = s.plot_nr_channels(tmp_path / "fig")
    assert set(drawn.model) == {"CifarResNet"} and not list((tmp_path / "tmp").iterdir())
    table = chanscope.evaluate(net, "embedded", attacks=["fgsm"], n=20)
    assert net.training and len(table)

