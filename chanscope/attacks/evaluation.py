"""Robustness evaluation of a model on a set of images: every attack per class, the per-image record, and the
gradient-masking checks (Carlini et al. 2019). Pure computation: tensors in, a DataFrame and dicts out; the
run folder is `chanscope.workflows.evaluate`'s.

Columns of the table: attack, threat_model, eps, steps, step_size, restarts, loss, class, n, natural_acc,
robust_acc (percent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn as nn

from chanscope.attacks.pgd import pgd
from chanscope.attacks.suite import AttackSpec, correct, has_probes, parse_attacks, run_attack
from chanscope.observe.analysis import percent
from chanscope.sharding import ONE_PROCESS

__all__ = ["default_attacks", "evaluate", "sanity_checks", "EvalResult", "EVAL_COLUMNS", "accuracy_under",
           "natural_correct", "strongest_components", "verdict", "DEFAULT_ATTACKS", "ADAPTIVE_DEFAULT"]


EVAL_COLUMNS = ["attack", "threat_model", "eps", "steps", "step_size", "restarts", "loss", "class", "n", "natural_acc",
                "robust_acc"]
Progress = Callable[[str, int, int], None]


@dataclass
class EvalResult:
    table: pd.DataFrame
    max_linf: dict[str, float]
    seconds: dict[str, float]
    sanity: list[dict] = field(default_factory=list)
    # per image (in the order of the evaluated subset): label, natural and each attack's correctness (0/1);
    # the same subset (n, seed) pairs images across models for paired intervals
    examples: pd.DataFrame | None = None

    def overall(self) -> pd.DataFrame:
        return self.table[self.table["class"] == "all"].reset_index(drop=True)


def _batches(n: int, bs: int):
    for i in range(0, n, bs):
        yield slice(i, min(n, i + bs))


def _rows(name: str, spec: AttackSpec, nat: torch.Tensor, rob: torch.Tensor, y: torch.Tensor,
          classes: list[str], loss: str | None = None) -> list[dict]:
    base = {"attack": name, "threat_model": spec.norm, "eps": spec.eps, "steps": spec.steps,
            "step_size": spec.step_size, "restarts": spec.restarts, "loss": loss or spec.loss}
    rows = []
    for c, cname in list(enumerate(classes)) + [(None, "all")]:
        sel = torch.ones_like(y, dtype=torch.bool) if c is None else (y == c)
        n = int(sel.sum())
        if n == 0:
            continue
        rows.append({**base, "class": cname, "n": n, "natural_acc": percent(int(nat[sel].sum()), n),
                     "robust_acc": percent(int(rob[sel].sum()), n)})
    return rows


def natural_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    return torch.cat([correct(model, x[s], y[s]) for s in _batches(len(y), batch_size)])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str], specs: list[AttackSpec], *,
             batch_size: int = 250, beta_atk: float = 2.0, seed: int = 0,
             progress: Progress | None = None, sharding=ONE_PROCESS) -> EvalResult:
    """Run every attack on (x, y); one row per attack and class plus an `all` row.

    sharding: `chanscope.sharding.ONE_PROCESS` or `chanscope.accel.distributed`, with which
    each torchrun rank attacks a contiguous shard and the per-example results are gathered."""
    dist_util = sharding
    dev = next(model.parameters()).device
    y_all = y.to(dev)
    part = dist_util.shard(len(y))
    x, y = x[part].to(dev), y[part].to(dev)
    nat = dist_util.gather_cat(natural_correct(model, x, y, batch_size))
    rows: list[dict] = []
    per_image = {"label": y_all.cpu().numpy(), "natural": nat.cpu().numpy().astype(int)}
    max_linf: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for spec in specs:
        t0 = time.time()
        torch.manual_seed(seed)
        rob, comps, worst = [], {}, 0.0
        if progress and dist_util.is_main():
            progress(spec.name, 0, len(y_all))
        for s in _batches(len(y), batch_size):
            details: dict = {}
            r, w, _ = run_attack(spec, model, x[s], y[s], beta_atk=beta_atk, seed=seed, details=details)
            rob.append(r)
            worst = max(worst, w)
            for k, v in details.items():
                comps.setdefault(k, []).append(v)
            if progress and dist_util.is_main():
                progress(spec.name, s.stop * dist_util.world_size(), len(y_all))
        rob_all = dist_util.gather_cat(torch.cat(rob))
        rows += _rows(spec.name, spec, nat, rob_all, y_all, classes)
        per_image[spec.name] = rob_all.cpu().numpy().astype(int)
        for k, v in comps.items():
            comp = dist_util.gather_cat(torch.cat(v))
            rows += _rows(f"{spec.name}:{k}", spec, nat, comp, y_all, classes, loss=k)
            per_image[f"{spec.name}:{k}"] = comp.cpu().numpy().astype(int)
        max_linf[spec.name] = worst
        seconds[spec.name] = round(time.time() - t0, 2)
    return EvalResult(pd.DataFrame(rows, columns=EVAL_COLUMNS), max_linf, seconds,
                      examples=pd.DataFrame(per_image))


def accuracy_under(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, alpha: float,
                   restarts: int = 1, random_start: bool = False, loss: str = "ce", batch_size: int = 250,
                   source: nn.Module | None = None, seed: int = 0, norm: str = "linf") -> float:
    """Robust accuracy (%) of `model` under PGD crafted on `source` (default: the model itself)."""
    src = model if source is None else source  # (a compiled module has no truth value)
    torch.manual_seed(seed)
    ok = []
    for s in _batches(len(y), batch_size):
        xb, yb = x[s], y[s]
        r = correct(model, xb, yb)
        for k in range(restarts):
            xa = pgd(src, xb, yb, eps=eps, alpha=alpha, steps=steps, loss=loss,
                     random_start=random_start or k > 0, norm=norm)
            r &= correct(model, xa, yb)
        ok.append(r)
    ok = torch.cat(ok)
    return percent(int(ok.sum()), len(ok))


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, batch_size: int = 250,
                  surrogate: nn.Module | None = None, square_queries: int = 1000, seed: int = 0,
                  loss: str = "ce", progress: Progress | None = None, norm: str = "linf") -> list[dict]:
    """Gradient-masking checks; each entry: check, passed, numbers, detail.

    Tolerance: one percentage point plus one example, for sampling noise on a finite set.
    """
    dev = next(model.parameters()).device
    x, y = x.to(dev), y.to(dev)
    tol = 1.0 + 100.0 / max(1, len(y))
    checks = []
    runs = {"done": -1, "total": 6 + (surrogate is not None)}  # attacks measured, for the progress display

    def tick() -> None:
        runs["done"] += 1
        if progress:
            progress("sanity checks", runs["done"], runs["total"])

    tick()  # 0 of total: the display starts its clock here

    def acc(steps: int, restarts: int = 1, e: float = eps, rs: bool = False, src=None) -> float:
        a = accuracy_under(model, x, y, eps=e, steps=steps, alpha=2.5 * e / steps, restarts=restarts,
                           random_start=rs, loss=loss, batch_size=batch_size, source=src, seed=seed, norm=norm)
        tick()
        return a

    a10, a20, a50 = acc(10), acc(20), acc(50)
    checks.append({"check": "more PGD steps never raise accuracy", "passed": a20 <= a10 + tol and a50 <= a20 + tol,
                   "numbers": {"pgd10": a10, "pgd20": a20, "pgd50": a50}})
    a_r = acc(20, restarts=5, rs=True)
    checks.append({"check": "more restarts never raise accuracy", "passed": a_r <= a20 + tol,
                   "numbers": {"pgd20_1_restart": a20, "pgd20_5_restarts": a_r}})
    huge = 0.5 if norm == "linf" else 16.0  # a budget no classifier survives: half the pixel range / L2 16
    big = acc(50, e=huge)
    checks.append({"check": f"eps = {huge:g} drives accuracy to about 0", "passed": big <= 2.0,
                   "numbers": {f"pgd50_eps{huge:g}": big}})
    sq_spec = parse_attacks("square", eps, square_queries=square_queries, threat_model=norm)[0]
    sq = []
    for s in _batches(len(y), batch_size):
        sq.append(run_attack(sq_spec, model, x[s], y[s], seed=seed)[0])
    a_sq = percent(int(torch.cat(sq).sum()), len(y))
    tick()
    checks.append({"check": "black-box Square is not stronger than white-box PGD", "passed": a_sq >= a50 - tol,
                   "numbers": {"square": a_sq, "pgd50": a50, "queries": square_queries}})
    if surrogate is not None:
        a_tr = acc(20, src=surrogate)
        checks.append({"check": "transfer from the surrogate is weaker than white-box", "passed": a_tr >= a20 - tol,
                       "numbers": {"transfer_pgd20": a_tr, "whitebox_pgd20": a20}})
    for c in checks:
        c["tolerance"] = round(tol, 3)
    return checks


def strongest_components(examples: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per adaptive attack: how many images each component broke, and how many only that component broke
    (images correct on the natural input)."""
    out: dict[str, dict[str, int]] = {}
    for top in {c.split(":")[0] for c in examples.columns if ":" in c}:
        comps = [c for c in examples.columns if c.startswith(top + ":")]
        nat = examples["natural"].to_numpy() == 1
        broke = {c: (examples[c].to_numpy() == 0) & nat for c in comps}
        n_broke = sum(b.astype(int) for b in broke.values())
        out[top] = {c.split(":", 1)[1]: int(b.sum()) for c, b in broke.items()}
        out[top] |= {f"only {c.split(':', 1)[1]}": int((b & (n_broke == 1)).sum()) for c, b in broke.items()}
    return out


def verdict(checks: list[dict]) -> str:
    failed = [c["check"] for c in checks if not c["passed"]]
    if not failed:
        return "no sign of gradient masking in these checks"
    return "possible gradient masking: " + "; ".join(failed)


DEFAULT_ATTACKS = "fgsm,pgd20,cw20"
ADAPTIVE_DEFAULT = "adaptive20"  # models with probes or auxiliary heads (CIFS, CAS): the attack that counts


def default_attacks(model: nn.Module) -> str:
    """The attacks `eval` runs when none are named: the adaptive one too where the model has extra heads."""
    return DEFAULT_ATTACKS + (f",{ADAPTIVE_DEFAULT}" if has_probes(model) else "")


