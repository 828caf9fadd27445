from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import chanscope
from chanscope.checkpoint import save_checkpoint
from chanscope.errors import ChanscopeError
from chanscope.models import CIFS, create_model
from chanscope.train import build_config
from chanscope.workflows.ablate import parse_vary, run_ablation
from chanscope.workflows.training import fit as train


def _linear_cifs(**kw):
    torch.manual_seed(0)
    return CIFS(16, 5, probe="linear", **kw)


def _paper_mask(cifs, feat, top1):
    W = cifs.probe[1].weight
    top2 = cifs.probe(feat).topk(2, 1).indices[:, 1]
    return F.softmax(W[top1] + W[top2], dim=1)


FEAT = torch.rand(6, 16, 4, 4)
Y = torch.tensor([0, 1, 2, 3, 4, 0])


def test_true_label_mask_is_softmax_of_label_plus_runner_up():
    c = _linear_cifs(train_label="true").train()
    assert torch.allclose(c(FEAT, Y)[1].mask, _paper_mask(c, FEAT, Y), atol=1e-6)


def test_pred_label_never_reads_the_label():
    c = _linear_cifs(train_label="pred").train()
    masks = []
    for y in (Y, torch.zeros(6, dtype=torch.long), torch.full((6,), 4)):
        masks.append(c(FEAT, y)[1].mask)
    assert all(torch.equal(masks[0], m) for m in masks)
    pred = c.probe(FEAT).argmax(1)
    assert torch.allclose(masks[0], _paper_mask(c, FEAT, pred), atol=1e-6)


def test_mix_uses_the_label_with_probability_p():
    c0, c1 = _linear_cifs(train_label="mix:0").train(), _linear_cifs(train_label="mix:1").train()
    m0, m1 = c0(FEAT, Y)[1].mask, c1(FEAT, Y)[1].mask
    pred = c0.probe(FEAT).argmax(1)
    assert torch.allclose(m0, _paper_mask(c0, FEAT, pred), atol=1e-6)
    assert torch.allclose(m1, _paper_mask(c1, FEAT, Y), atol=1e-6)
    half = _linear_cifs(train_label="mix:0.5").train()
    label = torch.full((4000,), 4)
    torch.manual_seed(1)
    f = torch.rand(4000, 16, 2, 2)
    mask = half(f, label)[1].mask
    differs = half.probe(f).argmax(1) != 4  # where label and prediction disagree, the two masks differ
    used_label = (mask - _paper_mask(half, f, label)).abs().amax(1).lt(1e-6)
    assert differs.sum() > 1000
    assert 0.45 < used_label[differs].float().mean() < 0.55


@pytest.mark.parametrize("mask, check", [
    ("softmax_scaled", lambda m, g: torch.allclose(m.sum(1), torch.full((6,), 16.0))),
    ("sigmoid", lambda m, g: torch.allclose(m, torch.sigmoid(g))),
    ("softmax_t:4", lambda m, g: torch.allclose(m, F.softmax(g / 4, 1))),
    ("softmax", lambda m, g: torch.allclose(m, F.softmax(g, 1))),
])
def test_mask_functions(mask, check):
    c = _linear_cifs(mask=mask).eval()
    m = c(FEAT)[1].mask
    g = c.relevance(FEAT)
    assert check(m, g)


def test_topk_changes_the_relevance():
    c1, c3 = _linear_cifs(topk=1).eval(), _linear_cifs(topk=3).eval()
    W = c1.probe[1].weight
    top = c1.probe(FEAT).topk(3, 1).indices
    assert torch.allclose(c1.relevance(FEAT), W[top[:, 0]], atol=1e-6)
    assert torch.allclose(c3.relevance(FEAT), W[top].sum(1), atol=1e-6)


def test_bad_switches_are_rejected():
    for kw, pat in [({"train_label": "mix:2"}, "mix:p"), ({"mask": "relu"}, "unknown mask"),
                    ({"topk": 0}, "topk"), ({"probes": ["cubic"]}, "probe kinds")]:
        with pytest.raises(ChanscopeError, match=pat):
            build_config("smoke", **kw)
    with pytest.raises(ChanscopeError, match="select_stages"):
        create_model("resnet18", feature_select="cifs", select_stages=["layer9"])


def test_switches_round_trip_through_a_checkpoint(tmp_path):
    kw = dict(width=0.125, feature_select="cifs", train_label="mix:0.3", topk=3, mask="softmax_t:2",
              probes=["linear", "linear"], select_stages=["layer3", "layer4"])
    m = create_model("resnet18", **kw).eval()
    save_checkpoint(tmp_path / "m.pt", m)
    back = chanscope.load_model(tmp_path / "m.pt", "cpu")
    assert back.model_kwargs == kw and len(back.selectors) == 4
    sel = dict(back.selectors)["layer3.0.select"]
    assert sel.topk == 3 and sel.mask_kind == "softmax_t:2" and sel.p_true == 0.3 and sel.probe_kind == "linear"
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(m(x), back(x))


def test_metrics_record_training_accuracy_as_test_sees_it(tmp_path):
    cfg = build_config("smoke", method="cifs", arch="resnet10", width=0.0625, subset=100, eval_n=20, epochs=1,
                       batch_size=50, steps=1, eval_steps=1)
    train(cfg, tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert {"train_eval_nat_acc", "train_eval_pgd_acc"} <= set(m.columns)
    assert 0 <= m.train_eval_pgd_acc[0] <= m.train_eval_nat_acc[0] <= 100


def test_ablate_refuses_a_grid_it_could_not_record_as_commands(tmp_path):
    """Every cell's training is recorded as a `chanscope train` command: an option without a flag is refused,
    in `vary` and in the base run, before anything is written."""
    import json

    with pytest.raises(ChanscopeError, match="unknown key 'weight_decay'"):
        parse_vary(["weight_decay=0,1e-4"])
    base = tmp_path / "base"
    base.mkdir()
    cfg = build_config("smoke", method="cifs", eval_steps=1)  # eval_steps: no flag of `chanscope train`
    (base / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    with pytest.raises(ChanscopeError, match=r"\['eval_steps'\] have no `chanscope train` flag"):
        run_ablation(base, parse_vary(["cifs.topk=1,2"]), tmp_path / "abl", attack="pgd2", n=20)
    assert not (tmp_path / "abl").exists()


@pytest.mark.slow  # ten micro trainings
def test_ablate_skips_finished_cells_and_writes_one_row_per_cell_and_seed(tmp_path, monkeypatch):
    cfg = build_config("micro", method="cifs", epochs=1)
    train(cfg, tmp_path / "base")
    grid = parse_vary(["cifs.train_label=true,pred", "cifs.topk=1,2"])
    assert grid == {"train_label": ["true", "pred"], "topk": [1, 2]}
    out = tmp_path / "abl"
    df = run_ablation(tmp_path / "base", grid, out, seeds=2, attack="pgd2", n=20)
    assert len(df) == (4 + 1) * 2 and set(df.seed) == {0, 1}
    assert pd.read_csv(out / "ablation.csv").shape[0] == 10 and (out / "ablation.png").stat().st_size > 5000
    import chanscope.workflows.ablate as ab
    from chanscope.workflows import training

    calls = []
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.append(a))
    df2 = run_ablation(tmp_path / "base", grid, out, seeds=2, attack="pgd2", n=20)
    assert calls == [] and df2.robust_acc.tolist() == df.robust_acc.tolist()
    import json

    record = json.loads((out / "ablation.json").read_text())["stages"]
    assert len(record) == 20 and record["train train_label=pred_topk=1-s1"]["command"].startswith("chanscope train")
    cell = chanscope.load_model(out / "train_label=pred_topk=1-s1" / "best.pt", "cpu")
    assert cell.model_kwargs["train_label"] == "pred" and cell.model_kwargs["topk"] == 1
    with pytest.raises(ChanscopeError, match="unknown key"):
        parse_vary(["cifs.colour=red"])
    # a warm-started base: the AT baseline must get its own warm start, and then uses it
    from dataclasses import replace

    warm = replace(cfg, init="natural-cifs.pt")
    with pytest.raises(ChanscopeError, match="`baseline_init`"):
        ab.grid_cells(warm, {"topk": [2]})
    cells = ab.grid_cells(warm, {"topk": [1, 2]}, baseline_init="natural-standard.pt")
    assert cells == [("topk=1", {"topk": 1}), ("topk=2", {"topk": 2}),
                     ("AT baseline", {"method": "at", "init": "natural-standard.pt"})]
    assert ab.grid_cells(cfg, {"topk": [2]})[-1] == ("AT baseline", {"method": "at", "init": None})
