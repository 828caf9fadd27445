"""What `run_eval` and `run_activations` are asked to do: option objects the CLI maps its flags onto.

Each object checks itself (`check`; the attacks and eps when they are parsed) before a model or data is
read, so a bad value is one clear error naming the option, whether it came from a flag, a notebook or a
recorded pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from chanscope.attacks.suite import AttackSpec, parse_attacks
from chanscope.errors import ChanscopeError, check_positive_int, check_range, check_threat_model

__all__ = ["RunOptions", "EvalOptions", "ActivationOptions"]


@dataclass
class RunOptions:
    """What every measurement of a model shares: the threat model, the images, the machine, the output."""

    threat_model: str | None = None  # linf | l2; None: the run's own (config.json), else linf
    eps: float | None = None  # in the threat model's units; None: its default (8/255 L-inf, 0.5 L2)
    n: int | None = None  # class-balanced test images; None: the command's default
    beta_atk: float = 2.0  # joint-loss beta of adaptive attacks (official: 2)
    follow_mask: bool = False  # adaptive attacks differentiate through the relevance and mask
    batch_size: int = 250
    seed: int = 0
    device: str | None = None
    data: str | None = None  # a data spec; None: the run's own data
    data_root: str | None = None
    download: bool = False
    classes_by: str = "name"
    out: str | None = None  # None: the run's folder

    def budget(self) -> float:
        """eps, or the threat model's default where none is set yet."""
        from chanscope.errors import DEFAULT_EPS

        return self.eps if self.eps is not None else DEFAULT_EPS[check_threat_model(self.threat_model)]

    @classmethod
    def given(cls, options: RunOptions | None, caller: str) -> RunOptions:
        """`options`, or the defaults where None; anything else is refused with what `caller` takes."""
        if options is None:
            return cls()
        if not isinstance(options, cls):
            raise TypeError(f"{caller} takes {cls.__name__}, not {type(options).__name__}: "
                            f"{caller}(model, {cls.__name__}(...))")
        return options

    def check(self) -> None:
        """eps is checked with the attacks (`parse_attacks`), `n` against the data (`test_subset`)."""
        if self.threat_model is not None:
            self.threat_model = check_threat_model(self.threat_model)
        check_positive_int(self.batch_size, "batch size")
        check_range(self.beta_atk, "beta_atk", 0.0, example="2 (the official)")


@dataclass
class EvalOptions(RunOptions):
    """`run_eval`: attacks (None: the model's defaults), their settings, and the gradient-masking checks."""

    attacks: str | None = None
    step_size: float | None = None  # None: eps/10, the paper's
    restarts: int = 1
    random_start: bool = False
    square_queries: int = 1000
    sanity: bool = False
    surrogate: str | None = None  # a model for the transfer check

    def check(self) -> None:
        super().check()
        check_positive_int(self.restarts, "restarts")
        check_positive_int(self.square_queries, "square_queries")

    def specs(self, default: str | None = None) -> list[AttackSpec]:
        """The attacks (`default` where none are named)."""
        names = self.attacks if self.attacks is not None else default
        return parse_attacks(names, self.budget(), step_size=self.step_size, restarts=self.restarts,
                             random_start=self.random_start, square_queries=self.square_queries,
                             follow=self.follow_mask, threat_model=self.threat_model or "linf")


@dataclass
class ActivationOptions(RunOptions):
    """`run_activations` and `chanscope.study`: the layers, the one attack, and how relevance is scored."""

    layers: list[str] | None = None  # None: the model's default layer
    attack: str = "pgd20"
    relevance: str = "gradient"
    relevance_on: str = "natural"
    threshold: float = 1e-2

    def spec(self) -> AttackSpec:
        """The attack, after every option is checked."""
        from chanscope.observe.relevance import RELEVANCE_METHODS

        self.check()
        if self.relevance not in RELEVANCE_METHODS:
            raise ChanscopeError(f"unknown relevance {self.relevance!r}; known: {', '.join(RELEVANCE_METHODS)}")
        if self.relevance_on not in ("natural", "adversarial"):
            raise ChanscopeError(f"`relevance_on` must be natural or adversarial, not {self.relevance_on!r}")
        check_range(self.threshold, "threshold", 0.0, 1.0,
                    example="0.01 (a channel is active above 1% of the image's largest)")
        specs = parse_attacks(self.attack, self.budget(), follow="all" if self.follow_mask else False,
                              threat_model=self.threat_model or "linf")
        if len(specs) != 1:
            raise ChanscopeError("`attack` takes one attack, e.g. pgd20")
        return specs[0]
