"""Budgets, in one table: what `chanscope train --preset NAME` trains and what `chanscope reproduce --scale
NAME` trains and measures. A scale's `train` holds TrainConfig fields over the paper's recipe (the config's
defaults); the other fields say how the study evaluates a model at that budget."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from chanscope.errors import ChanscopeError

__all__ = ["Scale", "SCALES", "scale_named", "Budget", "parse_budgets"]


@dataclass(frozen=True)
class Scale:
    name: str
    about: str  # what the budget is for, in a few words
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the paper's recipe
    eval_attacks: str = "fgsm,pgd20,cw20,adaptive20r2"  # `chanscope eval`'s suite (adaptive: models with probes)
    eval_n: int | None = 1000  # test images evaluated (None: all)
    aa_n: int = 500  # AutoAttack and the reference AutoAttack on this many (0: skipped)
    sanity_n: int = 200  # images of the gradient-masking checks
    act_n: int | None = 1000  # images of the activation study (None: all)
    act_attack: str = "pgd20"  # its attack (adaptive for models with probes)
    square_queries: int = 1000  # Square's query budget in the sanity checks

    def settings(self) -> dict[str, Any]:
        """The recipe (everything but the name and the description), as a study folder records it."""
        return {k: v for k, v in self.__dict__.items() if k not in ("name", "about")}


SCALES: dict[str, Scale] = {s.name: s for s in (
    Scale("micro", "seconds: checks the machinery end to end (tests and CI), not a measurement",
          {"arch": "resnet10", "width": 0.0625, "subset": 100, "epochs": 2, "batch_size": 50, "steps": 1,
           "step_size": 8 / 255, "val_n": 100, "eval_n": 20, "eval_steps": 1, "eval_step_size": 2 / 255},
          eval_attacks="fgsm,pgd2,adaptive2", eval_n=40, aa_n=0, sanity_n=20, act_n=40, act_attack="pgd2",
          square_queries=20),
    Scale("smoke", "minutes on 2 CPU cores, embedded data: checks the pipeline, not the paper",
          {"width": 0.125, "subset": 1000, "epochs": 3, "batch_size": 64, "steps": 2, "step_size": 4 / 255,
           "val_n": 100, "eval_n": 100, "eval_steps": 3, "eval_step_size": 3 / 255},
          eval_attacks="fgsm,pgd10,cw10,adaptive10", eval_n=200, aa_n=0, sanity_n=100, act_n=300,
          act_attack="pgd10", square_queries=100),
    Scale("cpu", "hours on 2 CPU cores with the CIFAR-10 archive: ResNet-18 at width 1/4, 5k images, PGD-3",
          {"width": 0.25, "subset": 5000, "epochs": 8, "steps": 3, "step_size": 3 / 255, "val_n": 500,
           "eval_n": 500, "eval_steps": 10, "eval_step_size": 2 / 255},
          eval_n=500, aa_n=100, sanity_n=100, square_queries=1000),
    Scale("cpu-long", "the cpu scale's network with 10k images, 15 epochs, PGD-5 (about 6x its compute)",
          {"width": 0.25, "subset": 10000, "epochs": 15, "steps": 5, "step_size": 2 / 255, "val_n": 500,
           "eval_n": 500, "eval_steps": 10, "eval_step_size": 2 / 255},
          eval_n=1000, aa_n=100, sanity_n=100),
    Scale("gpu", "minutes on one H200: full-width ResNet-18, 20k images, 5 epochs, PGD-5",
          {"subset": 20000, "epochs": 5, "steps": 5, "step_size": 2 / 255, "val_n": 1000, "eval_n": 1000,
           "eval_steps": 10, "eval_step_size": 2 / 255}),
    Scale("paper", "the paper's recipe: full CIFAR-10, 120 epochs, PGD-10 (GPU days)", {},
          eval_attacks="fgsm,pgd20,pgd100,cw20,adaptive20r2", eval_n=None, aa_n=1000, sanity_n=1000, act_n=10000,
          square_queries=5000),
)}


def scale_named(name: str, what: str = "scale") -> Scale:
    """SCALES[name], or the one-line error that lists the known ones (`what`: how the caller's option is called)."""
    from chanscope.errors import ChanscopeError

    if name not in SCALES:
        raise ChanscopeError(f"unknown {what} {name!r}; known: {', '.join(SCALES)}")
    return SCALES[name]


@dataclass(frozen=True)
class Budget:
    images: int
    epochs: int
    steps: int

    @property
    def label(self) -> str:
        return f"{self.images}x{self.epochs}x{self.steps}"

    @property
    def compute(self) -> int:
        """Training compute in image passes: images x epochs x (attack steps + 1)."""
        return self.images * self.epochs * (self.steps + 1)

    def scale(self, base: Scale) -> Scale:
        # the cpu scale's step (3/255) at PGD-3; 2/255 (the cpu preset's) for longer attacks
        step = base.train.get("step_size", 2 / 255) if self.steps <= 3 else 2 / 255
        return replace(base, train={**base.train, "subset": self.images, "epochs": self.epochs, "steps": self.steps,
                                    "step_size": step})


def parse_budgets(text: str) -> list[Budget]:
    out = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", item)
        if not m or min(int(v) for v in m.groups()) < 1:
            raise ChanscopeError(f"budget {item!r}: write IMAGESxEPOCHSxSTEPS with whole numbers from 1, "
                                 "e.g. 5000x8x3")
        out.append(Budget(*(int(v) for v in m.groups())))
    if not out:
        raise ChanscopeError("no budget given; e.g. 5000x8x3,10000x16x5")
    return sorted(set(out), key=lambda b: b.compute)
