"""Training configuration: one dataclass, one commented field per knob.

Defaults are the paper's recipe (Yan et al. 2021 / the official CIFS code, CIFAR-10 ResNet-18).
A preset (a scale of `chanscope.scales.SCALES`) overrides a few fields; explicit options override the preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from chanscope.data.sources import SOURCES
from chanscope.errors import (
    DEFAULT_EPS,
    ChanscopeError,
    check_eps,
    check_positive,
    check_positive_int,
    check_range,
    check_threat_model,
    parse_fraction,
)
from chanscope.models import list_models
from chanscope.names import METHODS
from chanscope.scales import SCALES, scale_named

__all__ = ["TrainConfig", "METHODS", "build_config", "config_diff", "default_preset"]

# activations' memory formats per stage (speed only; `chanscope.accel.layout` applies them)
LAYOUTS = ("auto", "hybrid", "nchw", "channels_last")


@dataclass
class TrainConfig:
    method: str = "cifs"  # standard | at (PGD-AT, Madry) | trades | cas | cifs | fsr
    arch: str = "resnet18"  # registry name (chanscope.models.list_models())
    width: float = 1.0  # channel multiplier (0.25 for CPU runs)
    natural: bool = False  # cas/cifs/fsr: train on natural images only (the paper's warm start)
    # data
    data: str = "embedded"  # embedded | cifar10 | svhn | fashion-mnist | ImageFolder path | archive
    data_root: str | None = None  # torchvision folder for named data sets
    download: bool = False  # let torchvision download (machines with internet)
    subset: int | None = None  # class-balanced seeded training subset
    # held-out validation split carved from the training set before the subset (class-balanced, seeded; never
    # trained on): best.pt and every per-epoch number used for selection come from it; 0: none (older runs)
    val_n: int = 1000
    augment: bool | None = None  # crop 4 + flip; None: as the data source says (CIFAR-like: yes)
    # optimisation (paper: SGD 0.1, momentum 0.9, wd 2e-4, batch 128, 120 epochs, lr x0.1 at 75, 90)
    epochs: int = 120
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: list[int] | None = None  # None: 62.5% and 75% of epochs (75 and 90 of 120)
    # training attack (PGD-10, eps 8/255, step 2/255, random start); under L2 every budget and step is scaled
    # by 0.5 / (8/255), so the recipe keeps its step-to-eps ratios (eps 0.5, step 0.125)
    threat_model: str = "linf"  # linf | l2
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    # losses
    beta: float = 2.0  # CIFS/CAS joint loss weight of the probe logits
    beta_atk: float = 2.0  # the same weight inside the training attack's joint loss
    trades_beta: float = 6.0  # TRADES robustness weight
    # CIFS stage
    probes: list[str] = field(default_factory=lambda: ["nonlinear", "linear"])
    select_stages: list[str] | None = None  # None: the last stage
    topk: int = 2  # logits summed for the relevance (paper: top-2)
    train_label: str = "true"  # top-1 class of the training mask: true (paper), pred, or mix:p (true w.p. p)
    mask: str = "softmax"  # softmax (paper) | softmax_t:T | softmax_scaled (x channels) | sigmoid
    # FSR (Kim et al. 2023, official defaults): mask temperature, separation and recalibration loss weights
    tau: float = 0.1
    lam_sep: float = 1.0
    lam_rec: float = 1.0
    # per-epoch check on eval_n validation (and training) images, PGD on the joint loss for CIFS/CAS; the
    # test subset of the same size is measured after the last epoch only (paper test: PGD-20, step 0.8/255)
    eval_n: int = 1000
    eval_steps: int = 20
    eval_step_size: float = 0.8 / 255
    eval_every: int = 1
    # run
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    # bf16 autocast of the training passes (attack included); evaluation attacks stay float32.
    # None: on CUDA only; True: on CPU too (pays on CPUs with AMX / AVX512-BF16); False: off
    bf16: bool | None = None
    channels_last: bool = True  # CUDA: model and batches channels_last (see `layout` for the CPU)
    # activations' memory format per stage (chanscope.accel.layout): auto = CPU hybrid (channels-last at
    # 16x16 and up, NCHW below; bench/layouts.py), CUDA as channels_last says
    layout: str = "auto"
    compile: bool = False  # torch.compile the model (CUDA)
    cuda_graphs: bool = False  # CUDA: replay each training-attack iteration from a captured CUDA graph
    fold_bn: bool = True  # craft training attacks on a copy with BatchNorm folded into the convolutions
    init: str | None = None  # start from another checkpoint's weights
    preset: str | None = None

    @property
    def feature_select(self) -> str:
        return METHODS[self.method][0]

    @property
    def adversarial(self) -> bool:
        return self.method != "standard" and not self.natural

    @property
    def loss(self) -> str:
        return METHODS[self.method][1]

    def resolved_milestones(self) -> list[int]:
        if self.milestones is not None:
            return list(self.milestones)
        return sorted({max(1, round(self.epochs * 0.625)), max(1, round(self.epochs * 0.75))})

    def uses_bf16(self, device_type: str) -> bool:
        return self.bf16 if self.bf16 is not None else device_type == "cuda"

    def compile_skipped(self, device_type: str) -> str | None:
        """Why `compile` does not apply on this device, or None where it does. A CIFS forward differentiates
        its probe inside (create_graph), and torch.compile's backward cannot be differentiated again; on CPU,
        inductor's training graph gave gradients far from float64 where eager stays close (torch 2.14.1,
        `bench/compile_check.py`)."""
        if not self.compile:
            return None
        if self.feature_select == "cifs":
            return ("`compile` does not apply to CIFS models (torch.compile cannot differentiate their forward's "
                    "relevance gradient again); training runs eagerly")
        if device_type != "cuda":
            return "`compile` applies on CUDA only (inductor's CPU gradients drift from eager); training runs eagerly"
        return None

    def model_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"width": self.width, "feature_select": self.feature_select}
        if self.feature_select == "cifs":
            kw.update(probes=list(self.probes), topk=self.topk, train_label=self.train_label, mask=self.mask)
        if self.feature_select == "fsr":
            kw["tau"] = self.tau
        if self.select_stages:
            kw["select_stages"] = list(self.select_stages)
        return kw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        d = {"val_n": 0, **d}  # runs made before the validation split had none
        return cls(**{k: v for k, v in d.items() if k in names})


def default_preset(device: str | None = None) -> str:
    """The preset a run gets when none is named: the paper's recipe where a GPU runs it, the CPU preset on a
    CPU (the paper's 120 full-width epochs would take weeks there)."""
    from chanscope.device import pick_device

    return "paper" if pick_device(device).type == "cuda" else "cpu"


BUDGETS = ("eps", "step_size", "eval_step_size")  # in the threat model's units


def l2_recipe(linf: dict[str, Any]) -> dict[str, float]:
    """L-inf budgets of a recipe (any of BUDGETS) as their L2 counterparts: scaled by 0.5 / (8/255), so the
    recipe keeps its step-to-eps ratios."""
    ratio = DEFAULT_EPS["l2"] / DEFAULT_EPS["linf"]
    return {k: parse_fraction(v) * ratio for k, v in linf.items()}


def build_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Paper defaults, then the preset, then the explicit options (None means 'not given')."""
    if preset is not None:
        scale_named(preset, "preset")
    values: dict[str, Any] = dict(SCALES[preset or "paper"].train)
    given = {k: v for k, v in overrides.items() if v is not None}
    threat = check_threat_model(given.get("threat_model"))
    if threat == "l2":  # the recipe's L-inf budgets, scaled to L2 where not given
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        values.update(l2_recipe({k: values.get(k, defaults[k]) for k in BUDGETS if k not in given}))
    values.update(given)
    values["threat_model"] = threat
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ChanscopeError(f"unknown training options {unknown}")
    for k in ("eps", "step_size", "eval_step_size"):
        if k in values:
            values[k] = parse_fraction(values[k])
    cfg = TrainConfig(preset=preset, **values)
    validate(cfg)
    if cfg.data not in SOURCES and Path(cfg.data).expanduser().exists():
        cfg.data = str(Path(cfg.data).expanduser().resolve())  # later commands read it from config.json
    return cfg


def validate(cfg: TrainConfig) -> None:
    if cfg.method not in METHODS:
        raise ChanscopeError(f"unknown method {cfg.method!r}; known: {', '.join(METHODS)}")
    if cfg.natural and cfg.method in ("at", "trades"):
        raise ChanscopeError(f"natural training with method {cfg.method!r} is method 'standard' (natural only "
                             "applies to cifs, cas and fsr, whose architecture differs); use method standard")
    if cfg.arch not in list_models():
        raise ChanscopeError(f"unknown arch {cfg.arch!r}; known: {', '.join(list_models())}")
    cfg.threat_model = check_threat_model(cfg.threat_model)
    check_eps(cfg.eps, "eps", norm=cfg.threat_model)
    check_eps(cfg.step_size, "step size", norm=cfg.threat_model, warn=False)
    check_eps(cfg.eval_step_size, "eval step size", norm=cfg.threat_model, warn=False)
    check_positive_int(cfg.steps, "steps")
    check_positive_int(cfg.eval_steps, "eval steps")
    check_positive_int(cfg.epochs, "epochs")
    check_positive_int(cfg.batch_size, "batch size")
    check_positive_int(cfg.eval_every, "eval every")
    if cfg.val_n < 0:
        raise ChanscopeError(f"val_n={cfg.val_n} must be 0 (no validation split) or a number of images, e.g. 500")
    check_positive(cfg.width, "width", "0.25")
    check_positive(cfg.lr, "lr", "0.1")
    check_range(cfg.beta, "beta", 0.0, example="2 (the paper's)")
    check_range(cfg.beta_atk, "beta_atk", 0.0, example="2 (the paper's)")
    check_range(cfg.trades_beta, "trades_beta", 0.0, example="6 (TRADES')")
    check_positive(cfg.tau, "tau", "0.1 (FSR's)")
    check_range(cfg.lam_sep, "lam_sep", 0.0, example="1 (FSR's)")
    check_range(cfg.lam_rec, "lam_rec", 0.0, example="1 (FSR's)")
    if cfg.milestones is not None and any(m < 1 for m in cfg.milestones):
        raise ChanscopeError(f"milestones {cfg.milestones} must be epochs from 1 on, e.g. 75,90")
    from chanscope.models.select import PROBES, mask_function, parse_train_label

    try:  # the model package's own checks, their messages as one-line errors
        parse_train_label(cfg.train_label)
        mask_function(cfg.mask)
    except ValueError as e:
        raise ChanscopeError(str(e)) from None
    if cfg.layout not in LAYOUTS:
        raise ChanscopeError(f"unknown layout {cfg.layout!r}; known: {', '.join(LAYOUTS)}")
    if cfg.topk < 1:
        raise ChanscopeError(f"topk={cfg.topk} must be at least 1")
    bad = [p for p in cfg.probes if p not in PROBES]
    if bad or not cfg.probes:
        raise ChanscopeError(f"unknown probe kinds {bad}; known: {', '.join(PROBES)}")


# fields that may differ on --resume without changing the run's arithmetic
_RESUME_FREE = {"device", "epochs", "milestones", "preset", "eval_every", "download", "data_root", "cuda_graphs",
                "layout"}


def config_diff(stored: TrainConfig, new: TrainConfig, given: set[str]) -> list[str]:
    """Options the user gave explicitly that disagree with a stored run (for --resume)."""
    out = []
    for k in sorted(given - _RESUME_FREE):
        a, b = getattr(stored, k, None), getattr(new, k, None)
        if a != b:
            out.append(f"{k}: run has {a!r}, given {b!r}")
    return out
