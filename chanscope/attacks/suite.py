"""Named attacks for evaluation: parse `fgsm,pgd20,cw20,aa,square,adaptive` into specs and run them.

Each attack returns, per example, whether the model is still correct under it (robust = correct on the
natural image and on every adversarial candidate the attack produced, AutoAttack's convention, so
robust accuracy never exceeds natural accuracy).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.attacks.pgd import attack_loss, distance, frozen_eval, pgd
from chanscope.errors import ChanscopeError, check_eps, check_positive_int, check_threat_model
from chanscope.losses import cw_margin

__all__ = ["AttackSpec", "parse_attacks", "run_attack", "ATTACK_NAMES", "has_probes", "correct", "follow_mask",
           "end_to_end_selectors"]

ATTACK_NAMES = ("fgsm (L-inf) / fgm (L2): the single gradient step", "pgd<K> (pgd20, pgd100, ...)", "cw<K> (cw20, ...)",
                "joint<K> (PGD on the CIFS/CAS/FSR joint loss, the official evaluations' attack)",
                "tpgd<K> (targeted PGD toward the most likely wrong class)", "aa", "aa-ref",
                "square", "adaptive<K> (adaptive20, ...; r<N> after any of these: N restarts, e.g. adaptive20r2; "
                "-rs: a random start, e.g. joint20-rs)")


@dataclass(frozen=True)
class AttackSpec:
    name: str  # as the user wrote it
    kind: str  # fgsm | pgd | aa | square | adaptive
    eps: float
    steps: int = 1
    step_size: float = 0.0
    restarts: int = 1
    loss: str = "ce"  # ce | cw | joint | probe<i> | final (adaptive: all)
    random_start: bool = False
    queries: int = 0  # square
    follow_mask: bool = False  # adaptive: differentiate through CIFS's relevance and mask (end to end)
    norm: str = "linf"  # the threat model: linf | l2 (eps and step_size in its units)

    def to_dict(self) -> dict:
        return asdict(self)


def has_probes(model: nn.Module) -> bool:
    return bool(getattr(model, "selectors", []))


def end_to_end_selectors(model: nn.Module) -> list[nn.Module]:
    """The selectors of `model` (any wrapper around it included) whose mask can be differentiated end to end."""
    return [m for m in model.modules() if hasattr(m, "end_to_end")]


@contextmanager
def follow_mask(model: nn.Module, on: bool = True) -> Iterator[nn.Module]:
    """Let gradients with respect to the input flow through every CIFS mask (its relevance is computed on
    the features themselves, with create_graph) for the duration; restored afterwards. CAS's and FSR's masks are
    differentiable functions of the features already, so for them this changes nothing."""
    sels = end_to_end_selectors(model)
    before = [s.end_to_end for s in sels]
    for s in sels:
        s.end_to_end = on
    try:
        yield model
    finally:
        for s, b in zip(sels, before):
            s.end_to_end = b


def parse_attacks(names: str | list[str], eps: float, *, step_size: float | None = None, restarts: int = 1,
                  random_start: bool = False, square_queries: int = 1000,
                  follow: bool | str = False, threat_model: str = "linf") -> list[AttackSpec]:
    """Defaults follow the paper's test: step eps/10 (0.8/255 at 8/255; 0.05 at L2 eps 0.5), zero start, one
    restart. threat_model: linf or l2; every attack of the list is under it.

    A name may carry its own restarts (pgd20r3, adaptive20r2) and a random start (joint20-rs). follow: True,
    adaptive attacks differentiate through CIFS's relevance and mask (the named PGD/CW attacks stay the official
    evaluation, which stops the gradient at the mask); "all": every gradient attack does."""
    norm = check_threat_model(threat_model)
    check_eps(eps, norm=norm)
    check_positive_int(restarts, "restarts")
    items = [n.strip().lower() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise ChanscopeError(f"no attack given; valid: {', '.join(ATTACK_NAMES)}")
    alpha = eps / 10 if step_size is None else step_size
    if step_size is not None:
        check_eps(step_size, "step size", norm=norm, warn=False)
    specs = []
    for n in items:
        m = re.fullmatch(r"(pgd|cw|tpgd|joint|adaptive)(\d*)(?:r(\d+))?(-rs)?", n)
        if n in ("fgsm", "fgm"):
            single = "fgsm" if norm == "linf" else "fgm"
            if n != single:
                raise ChanscopeError(f"attack {n!r} is the {'L2' if n == 'fgm' else 'L-inf'} single step; under "
                                     f"--threat-model {norm} use {single}")
            specs.append(AttackSpec(n, "fgsm", eps, 1, eps, 1, "ce", follow_mask=follow == "all", norm=norm))
        elif m and (m[2] or m[1] == "adaptive"):
            steps = int(m[2]) if m[2] else 20
            if steps < 1:
                raise ChanscopeError(f"attack {n!r}: steps={steps} must be at least 1")
            kind = "adaptive" if m[1] == "adaptive" else "pgd"
            loss = {"pgd": "ce", "cw": "cw", "tpgd": "targeted", "joint": "joint", "adaptive": "all"}[m[1]]
            own = int(m[3]) if m[3] else restarts
            check_positive_int(own, f"restarts of {n}")
            specs.append(AttackSpec(n, kind, eps, steps, alpha, own, loss, random_start or bool(m[4]),
                                    follow_mask=follow == "all" or (bool(follow) and kind == "adaptive"), norm=norm))
        elif n in ("aa", "autoattack"):
            specs.append(AttackSpec(n, "aa", eps, norm=norm))
        elif n == "aa-ref":  # the AutoAttack authors' implementation, to check the port against
            specs.append(AttackSpec(n, "aa-ref", eps, norm=norm))
        elif n == "square":
            check_positive_int(square_queries, "square queries")
            specs.append(AttackSpec(n, "square", eps, queries=square_queries, norm=norm))
        else:
            raise ChanscopeError(f"unknown attack {n!r}; valid: {', '.join(ATTACK_NAMES)}")
    return specs


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example correctness of the model's prediction, in eval mode with frozen parameters."""
    with torch.no_grad(), frozen_eval(model):
        return model(x).argmax(1) == y


def _toward(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The targeted loss: minus the cross-entropy toward each image's most likely wrong class on the clean image
    (maximised, it pulls the image toward that class)."""
    with torch.no_grad(), frozen_eval(model):
        logits = model(x)
    target = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    return lambda m, xa, _y: -F.cross_entropy(m(xa), target, reduction="none")


def _probe_loss(i: int, kind: str = "ce"):
    def fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, aux = m(x, return_aux=True)
        return F.cross_entropy(aux[i], y, reduction="none") if kind == "ce" else cw_margin(aux[i], y)
    return fn


def adaptive_losses(model: nn.Module, beta: float = 2.0) -> dict[str, object]:
    """The losses of the adaptive attack: cross-entropy and CW margin of the final logits, the joint loss
    (official evaluation; for FSR with beta 2: the final plus the robust and recalibrated heads' CE), and
    cross-entropy and CW margin of each probe's (auxiliary head's) logits."""
    losses: dict[str, object] = {"final": attack_loss("ce"), "final_cw": attack_loss("cw")}
    if has_probes(model):
        losses["joint"] = attack_loss("joint", beta)
        for i in range(sum(getattr(s, "n_heads", 1) for _, s in model.selectors)):  # FSR: 2 heads
            losses[f"probe{i}"] = _probe_loss(i)
            losses[f"probe{i}_cw"] = _probe_loss(i, "cw")
    return losses


def run_attack(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               beta_atk: float = 2.0, seed: int = 0, details: dict | None = None,
               ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Run one attack on a batch.

    Returns (still-correct mask, largest perturbation seen in the spec's norm, adversarial batch). The adversarial
    batch holds, per example, the first candidate that fooled the model, else the last candidate.
    details, if given, receives per-component masks for the adaptive attack.
    """
    robust = correct(model, x, y)
    worst = 0.0
    chosen = x.clone()
    settled = torch.zeros_like(robust)  # a candidate already fooled the model on this example

    def account(x_adv: torch.Tensor) -> torch.Tensor:
        nonlocal worst, chosen
        worst = max(worst, float(distance(x_adv, x, spec.norm).max()))
        if (x_adv < 0).any() or (x_adv > 1).any() or worst > spec.eps * (1 + 1e-5) + 1e-6:
            raise RuntimeError(f"{spec.name} left the threat model ({spec.norm} {worst:.6f}, eps {spec.eps:.6f})")
        ok = correct(model, x_adv, y)
        chosen = torch.where(settled[:, None, None, None], chosen, x_adv)
        settled.logical_or_(~ok)
        return ok

    if spec.kind in ("fgsm", "pgd"):
        loss = {"cw": "cw", "joint": "joint", "targeted": _toward(model, x, y)}.get(spec.loss, "ce")
        for r in range(spec.restarts):
            rs = spec.random_start or r > 0
            with follow_mask(model) if spec.follow_mask else nullcontext():
                x_adv = pgd(model, x, y, eps=spec.eps, alpha=spec.step_size, steps=spec.steps, loss=loss,
                            beta=beta_atk, random_start=rs, norm=spec.norm)
            robust &= account(x_adv)
    elif spec.kind == "adaptive":
        for cname, lfn in adaptive_losses(model, beta_atk).items():
            comp = correct(model, x, y)
            for r in range(spec.restarts):
                with follow_mask(model) if spec.follow_mask else nullcontext():
                    x_adv = pgd(model, x, y, eps=spec.eps, alpha=spec.step_size, steps=spec.steps, loss=lfn,
                                random_start=spec.random_start or r > 0, norm=spec.norm)
                comp &= account(x_adv)
            if details is not None:
                details[cname] = comp
            robust &= comp
    elif spec.kind in ("aa", "aa-ref", "square"):
        from chanscope.attacks.external import autoattack, autoattack_reference, square

        with frozen_eval(model):
            if spec.kind == "aa":
                x_adv = autoattack(model, x, y, spec.eps, seed=seed, norm=spec.norm)
            elif spec.kind == "aa-ref":
                x_adv = autoattack_reference(model, x, y, spec.eps, seed=seed, norm=spec.norm)
            else:
                x_adv = square(model, x, y, spec.eps, spec.queries, seed=seed, norm=spec.norm)
        robust &= account(x_adv)
    else:  # pragma: no cover - parse_attacks guards this
        raise ChanscopeError(f"unknown attack kind {spec.kind!r}")
    return robust, worst, chosen
