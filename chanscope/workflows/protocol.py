"""The study protocol: which models a study trains, with which warm start, and which attacks each is
evaluated with. Every adversarially trained model of a comparison gets the same recipe and budget and the same
kind of warm start (its own architecture trained naturally for the same number of epochs), as the official CIFS
run did, and as many attack runs per image as the model with the most objectives."""

from __future__ import annotations

import functools
import re
from typing import Any

from chanscope.errors import ChanscopeError

__all__ = ["SELECTING", "models_for", "paper_models", "OWN_ATTACK", "own_attack", "adaptive_components",
           "study_attacks", "fsr_module"]

SELECTING = ("cas", "cifs", "fsr")  # methods whose architecture differs: warm-started from their own natural run


def models_for(methods: list[str]) -> list[tuple[str, dict[str, Any], str | None]]:
    """The models that compare `methods` under one warm-start rule: AT and TRADES start from the standard
    model; CAS, CIFS and FSR from their own architecture trained naturally for the same budget."""
    from chanscope.train.config import METHODS

    unknown = [m for m in methods if m not in METHODS or m == "standard"]
    if unknown or not methods:
        raise ChanscopeError(f"unknown methods {unknown or methods}; compare some of: "
                             f"{', '.join(m for m in METHODS if m != 'standard')}")
    out: list[tuple[str, dict[str, Any], str | None]] = []
    if any(m not in SELECTING for m in methods):
        out.append(("standard", {"method": "standard"}, None))
    for m in methods:
        if m in SELECTING:
            out += [(f"{m}-nat", {"method": m, "natural": True}, None), (m, {"method": m}, f"{m}-nat")]
        else:
            out.append((m, {"method": m}, "standard"))
    return out


def paper_models(with_cas: bool, cifs_scratch: bool) -> list[tuple[str, dict[str, Any], str | None]]:
    """The paper's models, (name, method options, warm start from) in training order: AT and CIFS (and CAS)
    under `models_for`'s rule, and CIFS from scratch."""
    out = models_for(["at", "cifs"] + (["cas"] if with_cas else []))
    return out + ([("cifs-scratch", {"method": "cifs"}, None)] if cifs_scratch else [])


# the attack each defence's own evaluation reports (CIFS's official scripts: PGD on the joint loss from the
# clean image; CAS's: the joint loss, beta 2, from a random start); the others: PGD on the final logits' CE
OWN_ATTACK = {"cifs": "joint", "cas": "joint-rs"}


def own_attack(method: str, pgd: str) -> str:
    """The attack `method`'s own paper evaluates it with, at the steps of the PGD attack `pgd` (e.g. pgd20):
    `pgd` itself for a method without one of its own, else e.g. joint20 (CIFS) or joint20-rs (CAS)."""
    own = OWN_ATTACK.get(method)
    if not own:
        return pgd
    name, _, rs = own.partition("-")
    return pgd.replace("pgd", name, 1) + (f"-{rs}" if rs else "")


def _feature_select(method: str) -> str:
    return method if method in SELECTING else "none"


@functools.cache  # a plan asks once per model and seed; the answer depends on these two only
def adaptive_components(method: str, arch: str = "resnet18") -> int:
    """How many objectives the adaptive attack has on a model of `method` (final CE and CW; with heads also
    the joint loss and each head's CE and CW)."""
    from chanscope.attacks.suite import adaptive_losses
    from chanscope.models import create_model

    return len(adaptive_losses(create_model(arch, width=0.0625, feature_select=_feature_select(method))))


def study_attacks(attacks: str, method: str, methods: list[str], arch: str = "resnet18") -> str:
    """`attacks` for a model of `method` in a study of `methods`: the adaptive attack's restarts raised so that
    every model gets as many attack runs per image as the one with the most objectives (a plain model has 2, a
    CIFS model 7: with restarts unmatched the worst case of a defence would rest on more tries than AT's), and
    the attack its own paper's evaluation reports added (`OWN_ATTACK`)."""
    most = max(adaptive_components(m, arch) for m in methods)
    own_c = adaptive_components(method, arch)
    out = []
    for a in attacks.split(","):
        m = re.fullmatch(r"adaptive(\d*)(?:r(\d+))?", a)
        if m:
            r = int(m[2] or 1)
            matched = -(-most * r // own_c)
            a = a if matched == r else f"adaptive{m[1]}r{matched}"
        out.append(a)
    pgd = next((a for a in out if re.fullmatch(r"pgd\d+", a)), None)
    if pgd and own_attack(method, pgd) != pgd:
        out.insert(out.index(pgd) + 1, own_attack(method, pgd))
    return ",".join(out)


def fsr_module(arch: str) -> str:
    """The name of the FSR module in `arch` (after the last stage's last block, e.g. layer4.1.select)."""
    from chanscope.models import create_model
    from chanscope.models.select import FSR

    model = create_model(arch, width=0.0625, feature_select="fsr")
    return next(n for n, m in model.named_modules() if isinstance(m, FSR))
