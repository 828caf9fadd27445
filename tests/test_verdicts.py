"""Evidence a reviewer accepts: held-out selection, intervals, controls, and verdict rules that can fail."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from chanscope.data import load_data
from chanscope.train import build_config
from chanscope.train.setup import carve_validation
from chanscope.workflows.training import fit as train


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r.numpy().tobytes()) for r in x}


def test_validation_split_is_held_out_balanced_and_recorded(embedded):
    data = load_data("embedded")
    n_train = len(data.y_train)
    split = carve_validation(data, 200, seed=3)
    assert len(split.y) == 200 and torch.bincount(split.y, minlength=10).tolist() == [20] * 10
    assert len(data.y_train) == n_train - 200
    assert not _rows(split.x) & _rows(data.x_train)  # no validation image is trained on
    again = carve_validation(load_data("embedded"), 200, seed=3)
    assert again.record["indices_sha256"] == split.record["indices_sha256"]  # seeded: the same split


def test_selection_reads_validation_and_test_is_measured_once(tmp_path):
    cfg = build_config("smoke", method="at", arch="resnet10", width=0.0625, subset=200, val_n=50, epochs=3,
                       eval_n=20, eval_steps=1, batch_size=50)
    res = train(cfg, tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert m.val_pgd_acc.notna().all() and m.test_pgd_acc.iloc[:-1].isna().all() and m.test_pgd_acc.notna().iloc[-1]
    assert res.best_epoch == int(m.epoch[m.val_pgd_acc.to_numpy().argmax()])
    rec = json.loads((tmp_path / "r" / "config.json").read_text())
    assert rec["validation"]["n"] == 50 and rec["config"]["val_n"] == 50
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["best_val_pgd_acc"] == float(
        np.nanmax(m.val_pgd_acc))


# ------------------------------------------------------------------------ synthetic per-image records
from chanscope.observe import verdicts  # noqa: E402
from chanscope.observe.verdicts import Seed  # noqa: E402

K, C, PER = 10, 16, 30


@pytest.fixture(autouse=True)
def fewer_draws(draws):
    """400 bootstrap draws and 1000 permutations: the rules are the same, the suite quicker."""
    draws(n_boot=400, n_perm=1000)


def _ex(seed, *, nr_shift=0.0, deform=0.0, align=None, adv_acc=None, nat_acc=None):
    """Per-image records of a made-up model: NR channels raised by nr_shift under attack, adversarial
    magnitudes deformed channel-wise by `deform`, and per class an alignment of the adversarial magnitude
    with relevance of strength align[c]."""
    rng = np.random.default_rng(seed)
    rel = np.tile(np.linspace(-1, 1, C), (K, 1)) + 0.01 * np.random.default_rng(99).standard_normal((K, C))
    y = np.repeat(np.arange(K), PER)
    nat = np.abs(1 + 0.1 * rng.standard_normal((len(y), C)))
    pattern = np.where(np.arange(C) % 2 == 0, 1.0, -1.0)
    align = np.zeros(K) if align is None else np.asarray(align)
    adv = nat * (1 + deform * pattern) + nr_shift * (rel[y] < 0) + align[y][:, None] * rel[y] \
        + 0.05 * rng.standard_normal((len(y), C))
    nat_acc = np.full(K, 0.8) if nat_acc is None else np.asarray(nat_acc)
    adv_acc = np.full(K, 0.4) if adv_acc is None else np.asarray(adv_acc)
    nat_ok = rng.random(len(y)) < nat_acc[y]
    return {"y": y, "nat_ok": nat_ok.astype(int), "adv_ok": (nat_ok & (rng.random(len(y)) < adv_acc[y] /
                                                                        nat_acc[y])).astype(int),
            "mag_nat": nat.astype(np.float32), "mag_adv": np.clip(adv, 0, None).astype(np.float32),
            "relevance": rel.astype(np.float32), **_predictions(rng, y)}


def _predictions(rng, y, *, one_class=False, flip=0.6):
    """Per-image predictions and losses of a control: spread over the classes and moved by the attack, or (one_class)
    class 0 for every image and no prediction changed."""
    pred = np.zeros(len(y), int) if one_class else rng.integers(0, K, len(y))
    moved = (rng.random(len(y)) < (0.0 if one_class else flip))
    pred_adv = np.where(moved, (pred + 1) % K, pred)
    loss = rng.random(len(y)).astype(np.float32) + 1.0
    return {"pred_nat": pred, "pred_adv": pred_adv, "loss_nat": loss,
            "loss_adv": loss + (0.0 if one_class else 0.5)}


def _seeds(n=2, **models):
    return [Seed(act={m: _ex(10 * i + j, **kw) for j, (m, kw) in enumerate(models.items())}) for i in range(n)]


def test_interval_is_paired_and_covers_the_point():
    seeds = _seeds(at={"nr_shift": 0.3}, random={"nr_shift": 0.3})
    same = verdicts.interval(seeds, lambda s, w: verdicts.nr_over(s.act["at"], w) - verdicts.nr_over(s.act["at"], w))
    assert same.lo == same.hi == 0.0  # one weight vector per seed serves every model
    iv = verdicts.interval(seeds, lambda s, w: verdicts.nr_over(s.act["at"], w))
    assert iv.lo < iv.value < iv.hi and abs(iv.value - 0.3) < 0.05
    w = np.zeros(K * PER)
    w[:PER] = 2.0  # only class 0, twice: the weighted means are class 0's
    nat, _ = verdicts.class_means(seeds[0].act["at"], w)
    assert np.allclose(nat[0], seeds[0].act["at"]["mag_nat"][:PER].mean(0))


def test_interval_width_is_the_bootstrap_of_images_and_of_seeds():
    ok = np.r_[np.ones(150), np.zeros(250)]  # 37.5% of 400 images: binomial 95% half-width 1.96 * 2.42 points
    one = [Seed(ev={"m": pd.DataFrame({"pgd20": ok})})]
    iv = verdicts.interval(one, lambda s, w: verdicts.accuracy(s.ev["m"].pgd20.to_numpy(), w), "ev")
    half = 1.96 * 100 * np.sqrt(0.375 * 0.625 / 400)
    assert iv.value == 37.5 and abs(iv.lo - (37.5 - half)) < 1.0 and abs(iv.hi - (37.5 + half)) < 1.0
    # two seeds whose statistic does not depend on the images (0 and 1): the spread is the seeds' alone, and
    # resampling two seeds gives both twice in a quarter of the draws each
    two = [Seed(ev={"m": pd.DataFrame({"v": np.full(10, v)})}) for v in (0.0, 1.0)]
    iv = verdicts.interval(two, lambda s, w: float(s.ev["m"].v.iloc[0]), "ev")
    assert (iv.value, iv.lo, iv.hi) == (0.5, 0.0, 1.0)


def test_observation_1_rule():
    holds = verdicts.observation_1(_seeds(standard={"deform": 0.5}, at={"deform": 0.05}))
    fails = verdicts.observation_1(_seeds(standard={"deform": 0.05}, at={"deform": 0.5}))
    assert holds["verdict"] == "holds" and fails["verdict"] == "does not hold"
    # each half of the rule on its own: AT's magnitudes scaled by 1.5 keep the cosine at exactly 1 (above the
    # standard model's) but move the relative gap to 0.5, above the deformed standard model's 0.3
    scaled = _seeds(standard={"deform": 0.3}, at={})
    for s in scaled:
        s.act["at"]["mag_adv"] = 1.5 * s.act["at"]["mag_nat"]
    assert verdicts.cosine(scaled[0].act["at"]) == pytest.approx(1.0)
    assert verdicts.relgap(scaled[0].act["at"]) == pytest.approx(0.5, rel=1e-5)
    assert verdicts.observation_1(scaled)["verdict"] == "does not hold"
    same = _seeds(standard={"deform": 0.3})
    for s in same:
        s.act["at"] = s.act["standard"]  # no difference at all: neither side of zero
    assert verdicts.observation_1(same)["verdict"] == "unclear"


def test_observation_2_must_fail_when_the_random_control_shows_the_same():
    assert verdicts.observation_2(_seeds(at={"nr_shift": 0.3}, random={"nr_shift": 0.0}))["verdict"] == "holds"
    same = verdicts.observation_2(_seeds(at={"nr_shift": 0.3}, random={"nr_shift": 0.3}))
    assert same["verdict"] != "holds" and "random network" in same["control"]
    more = verdicts.observation_2(_seeds(at={"nr_shift": 0.3}, random={"nr_shift": 0.6}))
    assert more["verdict"] == "does not hold"
    # above the control but below zero: AT's own over-activation must be above 0 too
    under = verdicts.observation_2(_seeds(at={"nr_shift": -0.2}, random={"nr_shift": -0.5}))
    assert under["verdict"] == "does not hold" and "AT - random +0.3" in under["numbers"]


def test_observation_2_reports_the_relevance_sign_permutation_null():
    def p_of(row):
        return float(row["numbers"].split("p = ")[1].split()[0])

    assert p_of(verdicts.observation_2(_seeds(at={"nr_shift": 0.3}, random={}))) < 0.01  # 1/1001 at best
    assert p_of(verdicts.observation_2(_seeds(at={}, random={}))) > 0.05  # no shift: NR channels are like any


def test_observation_3_needs_both_halves_and_survives_the_confound():
    rob = np.linspace(0.1, 0.7, K)  # robust accuracy rises with the class label
    paper, beyond = verdicts.observation_3(_seeds(at={"align": np.linspace(0.0, 1.0, K), "adv_acc": rob}))
    assert paper["verdict"] == beyond["verdict"] == "holds", paper["numbers"]
    flat = verdicts.observation_3(_seeds(at={"align": np.zeros(K), "adv_acc": rob}))
    assert all(r["verdict"] != "holds" for r in flat)  # no alignment anywhere: no evidence for the claim
    # alignment follows how well a class was learned, and robust accuracy does too: the partial correlation
    # with natural accuracy controlled must keep the stricter row from "holds"
    learned = np.linspace(0.35, 0.95, K)
    paper, beyond = verdicts.observation_3(_seeds(at={"align": np.linspace(0, 1, K), "adv_acc": rob,
                                                      "nat_acc": learned}))
    assert beyond["verdict"] != "holds" and "partial (natural controlled)" in beyond["numbers"]
    assert paper["observation"].startswith("3.") and beyond["observation"].startswith("3'.")
    shuffled = verdicts.observation_3(_seeds(at={"align": np.linspace(0, 1, K)[::-1], "adv_acc": rob}))
    assert [r["verdict"] for r in shuffled] == ["does not hold"] * 2


def test_combine_p_is_fisher_not_the_mean():
    from scipy.stats import combine_pvalues

    for ps in ([0.697, 0.0005], [0.2, 0.3, 0.04], [1.0, 1.0]):
        assert verdicts.combine_p(ps) == pytest.approx(combine_pvalues(ps, method="fisher").pvalue, rel=1e-9)
    assert verdicts.combine_p([0.697, 0.0005]) < 0.01 < np.mean([0.697, 0.0005])
    assert np.isnan(verdicts.combine_p([0.5, float("nan")]))


def test_observation_3_combines_seeds_p_values_where_the_mean_would_mislead(monkeypatch):
    """Two seeds: one with p = 0.0005, one with p = 0.2. Their mean (0.10) is above 0.05, Fisher's combination
    (0.0010) below: the verdict must follow the valid combination."""
    rob = np.linspace(0.1, 0.7, K)
    seeds = _seeds(at={"align": np.linspace(0.0, 1.0, K), "adv_acc": rob})
    per_seed = iter([0.0005, 0.2] * 2)
    monkeypatch.setattr(verdicts, "permutation_p", lambda *a, **k: next(per_seed))
    paper, beyond = verdicts.observation_3(seeds)
    assert paper["verdict"] == beyond["verdict"] == "holds", paper["numbers"]
    assert "Fisher p = 0.0010" in paper["numbers"] and "(p = 0.0005), " in paper["numbers"]
    per_seed = iter([0.06, 0.2] * 2)  # neither seed alone nor together: unclear
    paper, _ = verdicts.observation_3(seeds)
    assert paper["verdict"] == "unclear"


def _aligned_below_zero() -> dict[str, np.ndarray]:
    """Every class aligns magnitude against relevance (Spearman from about -0.9 to -0.2), the robust classes
    least: alignment and robust accuracy rise together over the classes, natural accuracy does not."""
    rel = np.linspace(-1, 1, C)
    u = np.random.default_rng(7).standard_normal(C)
    u -= (u @ rel) / (rel @ rel) * rel  # orthogonal to relevance
    z_rel, z_u = rel / np.linalg.norm(rel), u / np.linalg.norm(u)
    a = np.linspace(-0.9, -0.2, K)
    y = np.repeat(np.arange(K), PER)
    adv = 2 + 2 * (a[:, None] * z_rel + np.sqrt(1 - a[:, None] ** 2) * z_u)
    nat_n = np.round(PER * np.array([0.9, 0.7, 0.85, 0.75, 0.95, 0.8, 0.72, 0.88, 0.78, 0.92])).astype(int)
    rob_n = np.round(PER * np.linspace(0.1, 0.6, K)).astype(int)
    i = np.tile(np.arange(PER), K)  # position of each image within its class
    return {"y": y, "nat_ok": (i < nat_n[y]).astype(int), "adv_ok": (i < rob_n[y]).astype(int),
            "mag_nat": np.ones((len(y), C), np.float32), "mag_adv": adv[y].astype(np.float32),
            "relevance": np.tile(rel, (K, 1)).astype(np.float32)}


def test_observation_3_needs_the_robust_half_aligned_above_zero():
    seeds = [Seed(act={"at": _aligned_below_zero()}) for _ in range(2)]  # made-up records: no noise to seed
    al = verdicts.alignment(seeds[0].act["at"])
    assert np.all(np.diff(al) > 0) and al.max() < 0  # the premise: rising with robustness, below zero
    paper, beyond = verdicts.observation_3(seeds)
    # the robust half beats the non-robust half and the partial correlation is strong, yet it is not aligned
    assert "partial (natural controlled) +1.00, Fisher p = 0.0000" in beyond["numbers"]
    assert paper["verdict"] == beyond["verdict"] == "does not hold", beyond["numbers"]


def test_worst_case_is_per_image_over_the_attacks_without_components():
    ev = pd.DataFrame({"label": 0, "natural": [1, 1, 1, 1], "pgd20": [1, 0, 1, 0], "adaptive20": [1, 1, 0, 0],
                       "adaptive20:final": [0, 1, 1, 1]})
    assert verdicts.worst_case(ev, None) == 25.0  # only image 0 survives pgd20 and adaptive20


def test_observation_4_rule_both_halves():
    def seeds(cifs_nr, cifs_acc):
        out = _seeds(at={"nr_shift": 0.3}, cifs={"nr_shift": cifs_nr})
        rng = np.random.default_rng(0)
        for s in out:
            n = 300
            at = (rng.random(n) < 0.40).astype(int)
            s.ev = {"at": pd.DataFrame({"label": 0, "natural": 1, "pgd20": at}),
                    "cifs": pd.DataFrame({"label": 0, "natural": 1, "adaptive20:joint": 1,
                                          "adaptive20": (rng.random(n) < cifs_acc).astype(int)})}
            s.act_attack = {"at": "pgd20", "cifs": "pgd20"}
        return out

    assert verdicts.observation_4(seeds(0.0, 0.60))["verdict"] == "holds"
    assert verdicts.observation_4(seeds(0.0, 0.20))["verdict"] == "does not hold"
    assert verdicts.observation_4(seeds(0.6, 0.60))["verdict"] == "does not hold"  # does not suppress NR
    level = verdicts.observation_4(seeds(0.0, 0.40))  # suppresses NR, but as robust as AT: not shown to beat
    assert level["verdict"] == "unclear" and "beats: unclear" in level["numbers"], level["numbers"]
    unmatched = seeds(0.0, 0.60)
    for s in unmatched:  # CIFS studied under another objective than AT: its NR half cannot decide
        s.act_attack = {"at": "pgd20", "cifs": "adaptive20"}
    row = verdicts.observation_4(unmatched)
    assert row["verdict"] == "unclear" and "suppresses: unclear (attacks not matched)" in row["numbers"]


def test_observation_2_does_not_hold_for_an_untrained_network(embedded):
    """The issue's case: AT's rule earned by a network that never trained. Two random initialisations
    of one architecture, one in the AT seat, one as the control: the verdict must not be 'holds'."""
    from chanscope.attacks.suite import parse_attacks
    from chanscope.models import create_model
    from chanscope.workflows.activations import study_activations

    x, y = embedded.x_test[::10].float() / 255, embedded.y_test[::10]
    seed = Seed()
    for name, init in (("at", 1), ("random", 2)):
        torch.manual_seed(init)
        net = create_model("resnet10", width=0.125).eval()
        (res,), _ = study_activations(net, x, y, embedded.classes, ["layer4"], parse_attacks("pgd5", 8 / 255)[0])
        seed.act[name] = res.examples
    assert verdicts.observation_2([seed])["verdict"] != "holds"


def test_per_image_records_reproduce_the_streamed_tables(embedded):
    """examples.npz holds exactly the images the tables were summed from (an independent recomputation)."""
    from chanscope.attacks.suite import parse_attacks
    from chanscope.models import create_model
    from chanscope.workflows.activations import study_activations

    torch.manual_seed(0)
    net = create_model("resnet10", width=0.125).eval()
    x, y = embedded.x_test[::20].float() / 255, embedded.y_test[::20]
    (res,), _ = study_activations(net, x, y, embedded.classes, ["layer4"], parse_attacks("fgsm", 8 / 255)[0],
                                  batch_size=16)
    ex = res.examples
    nat, adv = verdicts.class_means(ex, None)
    ch = res.channels.sort_values(["class", "channel"])
    assert np.allclose(nat.ravel(), ch.mag_nat, rtol=1e-5) and np.allclose(adv.ravel(), ch.mag_adv, rtol=1e-5)
    assert np.allclose(verdicts.class_accuracy(ex, None, "adv_ok"), res.classes.adv_acc, atol=0.01)
    assert np.allclose(verdicts.alignment(ex), res.classes.spearman_adv, atol=1e-6)
    cl = res.classes
    assert np.isclose(verdicts.nr_over(ex), cl.nr_over_rel.mean(), rtol=1e-5)


def test_adaptive_attack_follows_the_cifs_mask_as_a_hand_computed_gradient():
    """With follow_mask the input gradient includes the path through the relevance and the softmax mask:
    checked against the mask written out by hand for the nonlinear probe (GAP, Linear, Softplus(5), Linear)."""
    from chanscope.attacks.suite import follow_mask
    from chanscope.models.select import CIFS

    torch.manual_seed(0)
    sel = CIFS(6, 4, probe="nonlinear", hidden=5, topk=2).eval()
    feat = torch.rand(3, 6, 2, 2, requires_grad=True)
    w1, b1 = sel.probe[1].weight, sel.probe[1].bias
    w2 = sel.probe[3].weight

    def by_hand(f):
        pooled = f.mean(dim=(2, 3))
        h = pooled @ w1.T + b1
        logits = torch.nn.functional.softplus(h, beta=5) @ w2.T + sel.probe[3].bias
        top = logits.topk(2, dim=1).indices.detach()  # the chosen classes are a discrete choice
        # d(sum of chosen logits) / d(pooled); per position that is 1/(H W) of it, summed over H W positions
        g = (torch.sigmoid(5 * h) * w2[top].sum(1)) @ w1
        return f * torch.softmax(g, dim=1)[:, :, None, None]

    target = torch.randn(3, 6, 2, 2)
    holder = torch.nn.Sequential(sel)  # any module holding a CIFS selector
    with follow_mask(holder):
        assert sel.end_to_end
    assert not sel.end_to_end  # restored
    sel.end_to_end = True
    (g_model,) = torch.autograd.grad((sel(feat)[0] * target).sum(), feat)
    (g_hand,) = torch.autograd.grad((by_hand(feat) * target).sum(), feat)
    assert torch.allclose(g_model, g_hand, atol=1e-6)
    sel.end_to_end = False
    (g_stop,) = torch.autograd.grad((sel(feat)[0] * target).sum(), feat)
    assert not torch.allclose(g_stop, g_hand, atol=1e-4)  # stopping at the mask drops a real term
    assert torch.allclose(sel(feat)[0], by_hand(feat), atol=1e-6)  # the forward is the same either way


def test_follow_mask_attack_runs_and_is_recorded(tmp_path):
    from chanscope.checkpoint import save_checkpoint
    from chanscope.models import create_model
    from chanscope.workflows.evaluate import EvalOptions, run_eval

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c.pt", create_model("resnet10", width=0.0625, feature_select="cifs").eval())
    result, summary = run_eval(str(tmp_path / "c.pt"), EvalOptions(attacks="adaptive2r2", n=10, follow_mask=True,
                                                                     out=str(tmp_path)))
    spec = summary["attacks"][0]
    assert spec["follow_mask"] and spec["restarts"] == 2
    comps = set(result.table.attack)
    assert {"adaptive2r2:final_cw", "adaptive2r2:probe0_cw", "adaptive2r2:joint"} <= comps
    assert set(summary["adaptive_components"]["adaptive2r2"]) >= {"joint", "only joint"}
    ex = pd.read_csv(tmp_path / "eval_examples.csv")
    assert len(ex) == 10 and ex["adaptive2r2"].sum() == round(
        result.overall().set_index("attack").robust_acc["adaptive2r2"] / 10)


@pytest.mark.slow  # long: runs in `pytest -m slow`
def test_reference_autoattack_agrees_with_the_port_on_a_linear_model():
    """aa-ref (the AutoAttack authors' code) beside aa (torchattacks' port): on a linear classifier both find
    the same worst case, so they must agree image by image."""
    from chanscope.attacks.suite import parse_attacks, run_attack

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(24, 3, 8, 8)
    with torch.no_grad():
        y = lin(x).argmax(1)  # every image starts correct
    (aa,), (ref,) = parse_attacks("aa", 2 / 255), parse_attacks("aa-ref", 2 / 255)
    ok_port, linf_port, _ = run_attack(aa, lin, x, y)
    ok_ref, linf_ref, _ = run_attack(ref, lin, x, y)
    assert linf_ref <= 2 / 255 + 1e-6 and 0 < int(ok_ref.sum()) < len(y)  # some robust, some not
    assert torch.equal(ok_port, ok_ref)


def test_classes_csv_carries_intervals_around_its_values(tmp_path):
    from chanscope.checkpoint import save_checkpoint
    from chanscope.models import create_model
    from chanscope.workflows.activations import ActivationOptions, run_activations

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", create_model("resnet10", width=0.0625).eval())
    run_activations(str(tmp_path / "m.pt"), ActivationOptions(attack="fgsm", n=60, out=str(tmp_path)))
    cl = pd.read_csv(tmp_path / "classes.csv")
    for name in verdicts.INTERVAL_COLUMNS:
        lo, hi, v = cl[f"{name}_lo"], cl[f"{name}_hi"], cl[name]
        assert (lo <= hi + 1e-9).all(), name
        inside = ((lo - 1e-6 <= v) & (v <= hi + 1e-6)) | v.isna()
        assert inside.mean() >= 0.8, (name, cl[[name, f"{name}_lo", f"{name}_hi"]])
    assert (cl.spearman_adv_hi > cl.spearman_adv_lo).all()  # 6 images per class leave real uncertainty


def test_a_degenerate_control_cannot_decide_observation_2():
    """A control that predicts one class and that no attack moves: "control invalid", never holds or fails
    through it; the same records with a working control decide."""
    good = _seeds(at={"nr_shift": 0.3}, random={"nr_shift": 0.0})
    assert verdicts.observation_2(good)["verdict"] == "holds"
    bad = _seeds(at={"nr_shift": 0.3}, random={"nr_shift": 0.0})
    for i, s in enumerate(bad):
        s.act["random"].update(_predictions(np.random.default_rng(i), s.act["random"]["y"], one_class=True))
    row = verdicts.observation_2(bad)
    assert row["verdict"] == "control invalid" and "INVALID" in row["control"], row["control"]
    v = verdicts.control_validity(bad[0].act["random"])
    assert not v.valid and v.entropy == 0.0 and v.flipped == 0.0 and "entropy" in v.why
    old = {k: x for k, x in good[0].act["random"].items() if not k.startswith(("pred", "loss"))}
    assert not verdicts.control_validity(old).valid  # records of an older version: validity unknown
    # AT's own interval below zero still says "does not hold" without any control
    under = _seeds(at={"nr_shift": -0.3}, random={})
    for i, s in enumerate(under):
        s.act["random"].update(_predictions(np.random.default_rng(i), s.act["random"]["y"], one_class=True))
    assert verdicts.observation_2(under)["verdict"] == "does not hold"


def test_random_control_is_a_working_classifier_of_random_features(tmp_path):
    """The control as a study builds it (registry architecture, BatchNorm statistics of training images, fitted
    readout) is valid on real test images; the network as initialised, as the control was before, is not."""
    from chanscope.attacks.suite import parse_attacks
    from chanscope.data import load_data
    from chanscope.models.sources import load_model
    from chanscope.train import build_config
    from chanscope.workflows.activations import study_activations
    from chanscope.workflows.training import random_control

    cfg = build_config("smoke", method="at", seed=0)
    data = load_data("embedded")
    x, y = data.x_test[::10].float() / 255, data.y_test[::10]
    spec = parse_attacks("pgd5", 8 / 255)[0]
    found = {}
    for name, kw in (("new", {}), ("old", {"bn_images": 0, "readout": False})):
        path = random_control(cfg, tmp_path / name, **kw)
        net = load_model(path, device="cpu")
        (res,), _ = study_activations(net.eval(), x, y, data.classes, ["layer4"], spec)
        found[name] = verdicts.control_validity(res.examples)
    assert found["new"].valid, found["new"]
    assert not found["old"].valid and found["old"].entropy < 0.2, found["old"]
