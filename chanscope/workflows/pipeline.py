"""`chanscope reproduce`: train standard, AT, CIFS (and CAS), evaluate, record activations, plot, report.

Every stage is skipped when its outputs exist and are complete, and a cut-off training stage resumes,
so a stopped reproduction continues where it stopped. Every adversarially trained model of the
comparison gets the same recipe and budget, and the same kind of warm start (its own architecture
trained naturally for the same number of epochs), as the official CIFS run did.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chanscope.errors import ChanscopeError, check_positive_int
from chanscope.io import atomic_write_json
from chanscope.scales import SCALES, Scale, scale_named
from chanscope.train.config import TrainConfig, build_config
from chanscope.workflows.records import made_with, refuse_other_options
from chanscope.workflows.runs import locks_out, writable_dir
from chanscope.workflows.training import fit

__all__ = ["SCALES", "Scale", "plan", "reproduce", "Stage"]


@dataclass
class Stage:
    name: str  # e.g. "train at", "eval cifs"
    model: str
    kind: str  # train | eval | sanity | aa | activations | plots | report
    done: Callable[[], bool]
    run: Callable[[], None]
    command: str = ""
    extra: dict = field(default_factory=dict)


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


def _models(with_cas: bool, cifs_scratch: bool) -> list[tuple[str, dict[str, Any], str | None]]:
    """The paper's models, (name, method options, warm start from) in training order: AT and CIFS (and CAS)
    under `models_for`'s rule, and CIFS from scratch."""
    out = models_for(["at", "cifs"] + (["cas"] if with_cas else []))
    return out + ([("cifs-scratch", {"method": "cifs"}, None)] if cifs_scratch else [])


def _train_done(run: Path, epochs: int) -> bool:
    m = run / "metrics.csv"
    return (run / "summary.json").is_file() and m.is_file() and len(pd.read_csv(m)) >= epochs


@dataclass
class _Ctx:
    """What every stage of one seed shares."""

    out: Path  # the study folder
    prefix: str  # "" for the first seed, "seed<s>/" for the others
    sc: Scale
    seed: int
    data: str | None
    data_root: str | None
    device: str | None
    bf16: bool | None
    progress: Callable[[str, int, int], None] | None
    threat_model: str = "linf"

    def run(self, name: str) -> Path:
        return self.out / f"{self.prefix}{name}"

    def label(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def budget(self) -> dict[str, Any]:
        """The measurement options of the threat model: L-inf as before (8/255), L2 named with its budget."""
        from chanscope.errors import DEFAULT_EPS

        eps = {"eps": DEFAULT_EPS[self.threat_model]}
        return eps if self.threat_model == "linf" else {"threat_model": self.threat_model, **eps}

    def attacks(self, names: str) -> str:
        """A scale's attack list under the threat model (L2's single step is fgm)."""
        if self.threat_model == "linf":
            return names
        return ",".join("fgm" if a == "fgsm" else a for a in names.split(","))

    def cb(self, label: str):
        p = self.progress
        return (lambda a, done, total: p(label, done, total)) if p else None


def command_line(cmd: str, **opts: Any) -> str:
    """The `chanscope` command line that passes `opts` (option names as the Python API spells them): None
    left out, True a bare flag, False `--no-` flag, lists comma-joined, tuples as the flag repeated,
    multiples of 1/255 as k/255."""
    def value(v: Any) -> str:
        if isinstance(v, float) and 0 < v < 1 and abs(v * 255 - round(v * 255)) < 1e-6:
            return f"{round(v * 255)}/255"
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    parts = ["chanscope", *cmd.split()]
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if v is None:
            continue
        if isinstance(v, tuple):
            parts += [a for item in v for a in (flag, value(item))]
            continue
        parts += [flag] if v is True else [f"--no-{k.replace('_', '-')}"] if v is False else [flag, value(v)]
    return shlex.join(parts)


# training options `chanscope train` takes as flags, in the order a recorded command names them
_TRAIN_FLAGS = ("arch", "width", "data", "data_root", "subset", "val_n", "epochs", "batch_size", "lr", "milestones",
                "threat_model", "eps", "step_size", "steps", "beta", "probes", "train_label", "topk", "mask",
                "select_stages",
                "eval_n", "tau", "lam_sep", "lam_rec", "layout", "compile", "cuda_graphs")


def train_command(cfg: TrainConfig, out: Path) -> str:
    """The command line that trains `cfg` into `out`: its method and preset, every flag whose value differs
    from the preset's, seed, device, bf16, init."""
    base = build_config(cfg.preset, method=cfg.method, threat_model=cfg.threat_model)  # L2: the scaled recipe
    diff = {k: getattr(cfg, k) for k in _TRAIN_FLAGS if getattr(cfg, k) != getattr(base, k)}
    if cfg.threat_model != "linf":
        diff = {"threat_model": cfg.threat_model, **diff}
    hidden = [k for k in cfg.to_dict() if k not in _TRAIN_FLAGS and getattr(cfg, k) != getattr(base, k)
              and k not in ("method", "natural", "preset", "seed", "device", "bf16", "init")]
    if hidden:
        raise ChanscopeError(f"training option(s) {hidden} have no `chanscope train` flag; a study cannot record "
                             "them as a command")
    return command_line("train", method=cfg.method, natural=cfg.natural or None, preset=cfg.preset, **diff,
                        seed=cfg.seed, device=cfg.device, bf16=cfg.bf16, init=cfg.init, out=str(out))


def _train_stage(c: _Ctx, name: str, method: dict[str, Any], warm: str | None) -> Stage:
    run = c.run(name)
    recipe = dict(c.sc.train)
    if c.threat_model == "l2":  # the scale's L-inf budgets as L2 ones
        from chanscope.train.config import BUDGETS, l2_recipe

        recipe |= l2_recipe({k: v for k, v in recipe.items() if k in BUDGETS})
    common = {**recipe, "seed": c.seed, "device": c.device, "bf16": c.bf16, "data": c.data,
              "data_root": c.data_root, "threat_model": c.threat_model}
    cfg = build_config(c.sc.name, **common, **method, init=str(c.run(warm) / "last.pt") if warm else None)
    label = c.label(name)

    def do_train() -> None:
        cb = (lambda e, i, n, loss: c.progress(f"train {label} epoch {e + 1}/{cfg.epochs}", i, n)) \
            if c.progress else None
        fit(cfg, run, resume=(run / "last.pt").is_file(), on_batch=cb)

    return Stage(f"train {label}", label, "train", lambda: _train_done(run, cfg.epochs), do_train,
                 train_command(cfg, run), extra={"config": cfg, "run": run})


def _control_stage(c: _Ctx, like: Stage) -> Stage:
    """The random control: the compared architecture as initialised by the seed, never trained."""
    run = c.run("random")

    def make() -> None:
        from chanscope.workflows.training import random_control

        random_control(like.extra["config"], run)

    code = ("from chanscope.workflows.training import load_run_config, random_control; "
            f"random_control(load_run_config({str(like.extra['run'])!r}), {str(run)!r})")
    return Stage(f"control {c.label('random')}", c.label("random"), "train", lambda: _control_done(run),
                 make, shlex.join(["python", "-c", code]))


def _control_done(run: Path) -> bool:
    """A control made by this version: its BatchNorm statistics estimated on training images (a control of
    an older version, with the initial statistics, predicts one class and is made again)."""
    try:
        return (run / "best.pt").is_file() and "bn_images" in json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _eval_stage(c: _Ctx, name: str, kind: str, title: str, sub: str | None, **opts: Any) -> Stage:
    """One `chanscope eval` of a model's best.pt, into its run folder (or the subfolder `sub`)."""
    from chanscope.workflows.evaluate import EvalOptions, run_eval

    run, label = c.run(name), c.label(name)
    folder = run / sub if sub else run
    if "attacks" in opts:
        opts = {**opts, "attacks": c.attacks(opts["attacks"])}
    kw = {**c.budget(), **opts, "data": c.data, "data_root": c.data_root, "seed": c.seed, "device": c.device,
          "out": str(folder) if sub else None}
    options = EvalOptions(**kw)
    return Stage(f"{title} {label}", label, kind, lambda: _measured_as(folder / "eval.json", run, kw),
                 lambda: run_eval(str(run / "best.pt"), options, progress=_per_attack(c, f"{title} {label}")),
                 command_line("eval", model=str(run / "best.pt"), **kw),
                 extra={"options": options, "model": str(run / "best.pt")})


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


def _per_attack(c: _Ctx, stage: str):
    """An eval stage's progress: one bar per attack (a stage runs several, each from 0 to its images)."""
    return (lambda attack, done, total: c.progress(f"{stage}: {attack}", done, total)) if c.progress else None


def _measured_as(record: Path, run: Path, kw: dict[str, Any]) -> bool:
    """Whether a measurement's record (eval.json, activations.json) is this stage's: it exists, is newer than
    the model it measured, and ran the stage's attacks on its number of images with its seed (another command
    may have written into the run folder since: then the stage runs again)."""
    try:
        rec = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    best = run / "best.pt"
    if best.is_file() and best.stat().st_mtime > record.stat().st_mtime:
        return False
    specs = rec.get("attacks") if "attacks" in rec else [rec.get("attack") or {}]
    names = [a.get("name") for a in specs]
    asked = kw.get("attacks") or kw.get("attack")
    data = rec.get("data") or {}
    n = data["n_requested"] if "n_requested" in data else data.get("n_eval", data.get("n_used"))
    follow = all(a.get("follow_mask") == bool(kw.get("follow_mask")) for a in specs
                 if a.get("kind") == "adaptive" or "attack" in rec)
    return (names == asked.split(",") and rec.get("seed") == kw.get("seed") and follow
            and (kw.get("n") is None or n == kw["n"]))


def _eval_stages(c: _Ctx, name: str, method: str, methods: list[str]) -> list[Stage]:
    sc = c.sc
    attacks = study_attacks(sc.eval_attacks, method, methods, sc.train.get("arch", "resnet18"))
    stages = [_eval_stage(c, name, "eval", "eval", None, attacks=attacks, n=sc.eval_n,
                          square_queries=sc.square_queries, follow_mask=True),
              _eval_stage(c, name, "sanity", "sanity", "sanity", attacks="pgd20", n=sc.sanity_n, sanity=True,
                          square_queries=sc.square_queries)]
    if sc.aa_n:
        stages.append(_eval_stage(c, name, "aa", "autoattack", "aa", attacks="aa,aa-ref", n=sc.aa_n))
    return stages


def _fsr_module(arch: str) -> str:
    """The name of the FSR module in `arch` (after the last stage's last block, e.g. layer4.1.select)."""
    from chanscope.models import create_model
    from chanscope.models.select import FSR

    model = create_model(arch, width=0.0625, feature_select="fsr")
    return next(n for n, m in model.named_modules() if isinstance(m, FSR))


def _activations_stage(c: _Ctx, name: str, parts: bool = False) -> Stage:
    """The activation study of a model; parts (FSR): its robust and non-robust parts, into run/parts."""
    from chanscope.workflows.activations import ActivationOptions, layer_suffix, run_activations

    run, label, sc = c.run(name), c.label(name), c.sc
    title = "activations-parts" if parts else "activations"
    prog = (lambda d, t: c.progress(f"{title} {label}", d, t)) if c.progress else None
    selects = name.startswith(SELECTING)
    folder = run / "parts" if parts else run
    layers = None
    if parts:
        sel = _fsr_module(c.sc.train.get("arch", "resnet18"))
        layers = (f"{sel}.robust", f"{sel}.nonrobust", f"{sel}.recalibrated")
    # every model under one objective (the scale's PGD on the final logits' cross-entropy), a model with a CIFS
    # mask differentiated through it: NR over-activation compared between models under matched attacks
    kw = {**({} if c.threat_model == "linf" else c.budget()), "attack": sc.act_attack, "n": sc.act_n,
          "layer": layers, "follow_mask": selects or None, "data": c.data, "data_root": c.data_root,
          "seed": c.seed, "device": c.device, "out": str(folder) if parts else None}
    call = {k: v for k, v in kw.items() if k != "layer"} | {"follow_mask": selects}
    options = ActivationOptions(**call, layers=list(layers) if layers else None)
    return Stage(f"{title} {label}", label, "activations",
                 lambda: _measured_as(folder / f"activations{layer_suffix(layers[0]) if parts else ''}.json", run,
                                      {**kw, "follow_mask": selects}),
                 lambda: run_activations(str(run / "best.pt"), options, progress=prog, owned=True),
                 command_line("activations", model=str(run / "best.pt"), **kw),
                 extra={"options": options, "model": str(run / "best.pt")})


def plan(out: Path, scale: str | Scale, *, data: str | None = None, data_root: str | None = None,
         with_cas: bool = False, cifs_scratch: bool = True, seed: int = 0, seeds: int = 1, device: str | None = None,
         eval_models: list[str] | None = None, progress: Callable[[str, int, int], None] | None = None,
         bf16: bool | None = None, controls: bool = True, methods: list[str] | None = None,
         threat_model: str = "linf") -> list[Stage]:
    """Every stage of the study: per seed (seed, seed + 1, ...; the first in `out`, the others in
    `out/seed<s>`) train the models, make the random control, evaluate and record activations.

    scale: a name of SCALES or a Scale (the budget series makes one per budget).
    methods: the adversarially trained methods to compare (`models_for`) instead of the paper's models.
    threat_model: linf or l2: every training, attack and activation study under it (L2 at eps 0.5)."""
    from chanscope.errors import check_threat_model

    threat_model = check_threat_model(threat_model)
    sc = scale_named(scale) if isinstance(scale, str) else scale
    check_positive_int(seeds, "seeds")
    stages: list[Stage] = []
    models = models_for(methods) if methods else _models(with_cas, cifs_scratch)
    compared = eval_models or [m for m, _, _ in models if not m.endswith("-nat")]
    for k in range(seeds):
        c = _Ctx(Path(out), "" if k == 0 else f"seed{seed + k}/", sc, seed + k, data, data_root, device, bf16,
                 progress, threat_model)
        trains = [_train_stage(c, name, method, warm) for name, method, warm in models]
        at = next((st for st in trains if st.model == c.label("at")), None)
        stages += trains
        if controls and at is not None:
            stages += [_control_stage(c, at), _activations_stage(c, "random")]
        method_of = {m: opts["method"] for m, opts, _ in models}
        for name in compared:
            stages += (_eval_stages(c, name, method_of.get(name, name), [method_of.get(n, n) for n in compared])
                       + [_activations_stage(c, name)])
            if name == "fsr":
                stages.append(_activations_stage(c, name, parts=True))
    return _order(stages)


_CORE = ("standard", "at", "cifs-nat", "cifs", "random")


def _order(stages: list[Stage]) -> list[Stage]:
    """Core comparison first (train, then study), then CAS and CIFS-from-scratch, then AutoAttack last:
    a reproduction cut short still has its main figures. Within a group, seed by seed."""
    def key(st: Stage) -> tuple[int, int]:
        core = st.model.rsplit("/", 1)[-1] in _CORE
        seed_rank = 0 if "/" not in st.model else 1
        if st.kind == "aa":
            return (4, seed_rank)
        if st.kind == "train":
            return (0 if core else 2, seed_rank)
        return (1 if core else 3, seed_rank)
    return sorted(stages, key=key)  # stable: keeps the model order inside each group


_STUDY_DEFAULTS = {"scale": "smoke", "data": "embedded", "seed": 0, "bf16": None, "with_cas": False,
                   "cifs_scratch": True, "seeds": 1, "threat_model": "linf"}
_ADDITIVE = ("with_cas", "cifs_scratch", "seeds")  # may change later: they add models (or leave some out)


def _data_key(data: str | None) -> str:
    """The data as recorded: a path resolved (a study may be continued from another folder), a name as is."""
    if not data:
        return "embedded"
    p = Path(data).expanduser()
    return str(p.resolve()) if p.exists() else data


def study_options(record: dict, given: dict[str, Any]) -> dict[str, Any]:
    """The options a study runs with: those given, else those the folder was made with, else the defaults.

    Raises a one-line error naming every option that differs from the folder's (nothing is written): a
    study's models, evaluations and figures all come from one data set, scale, seed and recipe.
    """
    made = made_with(record, legacy={k: record[k] for k in ("scale", "data", "seed", "bf16", "with_cas")
                                     if k in record})  # records written before options were kept together
    if "data" in made:
        made["data"] = _data_key(made["data"])
    if "data" in given and given["data"] is not None:
        given = {**given, "data": _data_key(given["data"])}
    opts = {k: given[k] if given.get(k) is not None else made.get(k, default) for k, default in _STUDY_DEFAULTS.items()}
    if record.get("stages"):
        asked = {k: g for k, g in given.items() if k in _STUDY_DEFAULTS and g is not None
                 and not (k in _ADDITIVE and g)}
        refuse_other_options(made, asked, "study", "rerun with its options to continue it (or leave them out), "
                             "or pick another `out` for a new study")
    settings = record.get("scale_settings")
    if record.get("stages") and settings is not None and not _same_settings(settings, SCALES[opts["scale"]]):
        raise ChanscopeError(f"scale {opts['scale']!r} has other settings than when this study folder was made "
                             "(another chanscope version); pick another `out` for a new study")
    return opts


def _same_settings(recorded: dict[str, Any], scale: Scale) -> bool:
    """Whether a study folder's recorded scale settings are this scale's (records of older versions also
    named a preset; the training recipe itself is compared run by run)."""
    now = json.loads(json.dumps(scale.settings()))
    return all(recorded[k] == now[k] for k in now if k in recorded)


def _check_runs(stages: list[Stage]) -> None:
    """Refuse a study folder whose trained runs were made with another recipe (e.g. another scale)."""
    from chanscope.train.config import config_diff
    from chanscope.workflows.training import load_run_config

    for st in stages:
        cfg = st.extra.get("config")
        if cfg is None or not (st.extra["run"] / "config.json").is_file():
            continue
        stored = load_run_config(st.extra["run"])
        diff = config_diff(stored, cfg, set(cfg.to_dict()) - _FREE_IN_STUDY)
        if diff:
            raise ChanscopeError(f"{st.extra['run']} was trained with other options than this study asks for "
                                 f"({'; '.join(diff[:3])}); rerun with the options it was made with, or pick "
                                 "another `out`")


_FREE_IN_STUDY = {"device", "preset", "download", "data_root", "init", "layout", "cuda_graphs"}


def read_record(path: Path) -> dict:
    """A workflow's record of its stages (pipeline.json, series.json), or a new one."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {"stages": {}}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ChanscopeError(f"{path} is not valid JSON; delete it and run again (finished stages are found "
                             "again from their run folders)") from None


def run_stages(stages: list[Stage], record: dict, record_path: Path,
               on_stage: Callable[[str, str, float], None] | None = None, time_limit: float | None = None,
               start: bool = True) -> None:
    """Run the stages not yet done, in order; each finished one is added to the record, written at once.

    time_limit: seconds after which no new stage starts (the finished ones are still reported as skipped).
    start: False reports each stage finished or not and starts none (the record is left as it is)."""
    def say(name: str, status: str, secs: float = 0.0) -> None:
        if on_stage:
            on_stage(name, status, secs)

    started = time.time()
    for st in stages:
        if not start:
            say(st.name, "finished" if st.done() else "not finished")
            continue
        if time_limit is not None and time.time() - started > time_limit and not st.done():
            say(st.name, "not started (time limit; run again to continue)")
            continue
        if st.done():
            if st.name in record["stages"]:  # records of older versions: the command as this one writes it
                record["stages"][st.name]["command"] = st.command
            say(st.name, "skipped (complete)")
            continue
        t0 = time.time()
        say(st.name, "running")
        st.run()
        secs = time.time() - t0
        prev = record["stages"].get(st.name, {}).get("seconds", 0.0)
        record["stages"][st.name] = {"seconds": round(prev + secs, 1), "command": st.command, "kind": st.kind,
                                     "model": st.model}
        atomic_write_json(record_path, record)
        say(st.name, "done", secs)


@locks_out
def reproduce(out: str | Path, scale: str | None = None, *, data: str | None = None, data_root: str | None = None,
              with_cas: bool | None = None, cifs_scratch: bool | None = None, seed: int | None = None,
              seeds: int | None = None, only: str | None = None, device: str | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              on_stage: Callable[[str, str, float], None] | None = None, time_limit: float | None = None,
              bf16: bool | None = None, threat_model: str | None = None) -> dict:
    """Run (or continue) the whole study into `out`; returns the pipeline record (also pipeline.json).

    Options left as None take the value the folder was made with (a new folder: scale smoke, embedded data,
    seed 0); an option that differs from the folder's is refused before anything is written.
    seeds: how many seeds (seed, seed + 1, ...); verdicts read the spread over them.
    only: "train" runs the training stages and the random controls only (compute started early; a later
    call without it evaluates and reports).
    time_limit: seconds after which no new stage starts (a lent machine's budget); the report then covers
    the finished stages and a later call continues with the rest.
    bf16: autocast of the training stages (None: CUDA only); evaluation and activations stay float32.
    threat_model: linf (default) or l2 (training, attacks and activations at L2 eps 0.5).
    """
    from chanscope.errors import check_threat_model

    if threat_model is not None:
        threat_model = check_threat_model(threat_model)
    if scale is not None:
        scale_named(scale)
    if only not in (None, "train"):
        raise ChanscopeError(f"only={only!r}: give 'train' (train every model and control, nothing else) or none")
    out = writable_dir(out)
    record_path = out / "pipeline.json"
    record = read_record(record_path)
    opts = study_options(record, {"scale": scale, "data": data, "seed": seed, "bf16": bf16, "with_cas": with_cas,
                                  "cifs_scratch": cifs_scratch, "seeds": seeds, "threat_model": threat_model})
    scale, seed, bf16 = opts["scale"], opts["seed"], opts["bf16"]
    data = None if opts["data"] == "embedded" else opts["data"]
    stages = plan(out, scale, data=data, data_root=data_root, with_cas=opts["with_cas"],
                  cifs_scratch=opts["cifs_scratch"], seed=seed, seeds=opts["seeds"], device=device,
                  progress=progress, bf16=bf16, threat_model=opts["threat_model"])
    if only == "train":
        stages = [st for st in stages if st.kind == "train"]
    _check_runs(stages)
    record.update({"scale": scale, "scale_settings": SCALES[scale].settings(), "data": opts["data"],
                   "with_cas": opts["with_cas"], "seed": seed, "bf16": bf16, "options": opts})
    from chanscope.io import versions

    record["versions"] = versions()
    run_stages(stages, record, record_path, on_stage, time_limit)
    if only is None:
        from chanscope.workflows.report import write_outputs

        write_outputs(out, record, models=[s.model for s in stages if s.kind in ("eval", "activations")])
    atomic_write_json(record_path, record)
    return record
