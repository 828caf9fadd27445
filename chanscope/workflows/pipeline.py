"""`chanscope reproduce`: train standard, AT, CIFS (and CAS), evaluate, record activations, plot, report.

`plan` is the planner every study uses (reproduce, compare, series): per seed, the typed jobs of the protocol
(`protocol`) as a `Study`; `study.run_study` runs it, skipping finished ones and resuming a cut training, so a
stopped reproduction continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chanscope.errors import ChanscopeError, check_positive_int
from chanscope.scales import SCALES, Scale, scale_named
from chanscope.train.config import build_config
from chanscope.workflows.jobs import ActivationJob, ControlJob, EvalJob, RunId, TrainJob
from chanscope.workflows.options import ActivationOptions, EvalOptions
from chanscope.workflows.protocol import SELECTING, fsr_module, models_for, paper_models, study_attacks
from chanscope.workflows.records import study_options
from chanscope.workflows.runs import locks_out, writable_dir
from chanscope.workflows.study import Stage, Study, StudyRecord, check_runs, run_stages, run_study

__all__ = ["SCALES", "Scale", "plan", "reproduce", "Stage", "Study", "StudyRecord", "run_study", "run_stages"]


@dataclass
class _Ctx:
    """What every stage of one seed shares."""

    out: Path  # the study folder
    index: int  # 0 for the first seed (its runs in `out`), k for the k-th further one (in `out/seed<s>`)
    sc: Scale
    seed: int
    data: str | None
    data_root: str | None
    device: str | None
    bf16: bool | None
    progress: Callable[[str, int, int], None] | None
    threat_model: str = "linf"

    def id(self, name: str) -> RunId:
        return RunId(self.index, name, self.seed)

    def run(self, name: str) -> Path:
        return self.id(name).folder(self.out)

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


def _train_stage(c: _Ctx, name: str, method: dict[str, Any], warm: str | None) -> Stage:
    recipe = dict(c.sc.train)
    if c.threat_model == "l2":  # the scale's L-inf budgets as L2 ones
        from chanscope.train.config import BUDGETS, l2_recipe

        recipe |= l2_recipe({k: v for k, v in recipe.items() if k in BUDGETS})
    common = {**recipe, "seed": c.seed, "device": c.device, "bf16": c.bf16, "data": c.data,
              "data_root": c.data_root, "threat_model": c.threat_model}
    cfg = build_config(c.sc.name, **common, **method, init=str(c.run(warm) / "last.pt") if warm else None)
    rid = c.id(name)
    return Stage(f"train {rid.label}", rid, "train", TrainJob(cfg, c.run(name)), c.progress)


def _control_stage(c: _Ctx, like: Stage) -> Stage:
    """The random control: the compared architecture as initialised by the seed, never trained."""
    rid = c.id("random")
    job = ControlJob(like.job.out, like.job.config, c.run("random"))
    return Stage(f"control {rid.label}", rid, "train", job, c.progress)


def _eval_stage(c: _Ctx, name: str, kind: str, title: str, sub: str | None, **opts: Any) -> Stage:
    """One `chanscope eval` of a model's best.pt, into its run folder (or the subfolder `sub`)."""
    rid, run = c.id(name), c.run(name)
    if "attacks" in opts:
        opts = {**opts, "attacks": c.attacks(opts["attacks"])}
    options = EvalOptions(**c.budget(), **opts, data=c.data, data_root=c.data_root, seed=c.seed, device=c.device,
                          out=str(run / sub) if sub else None)
    return Stage(f"{title} {rid.label}", rid, kind, EvalJob(run, options), c.progress)


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


def _activations_stage(c: _Ctx, name: str, method: str, parts: bool = False) -> Stage:
    """The activation study of a model of `method`; parts (FSR): its robust and non-robust parts, into run/parts."""
    from chanscope.workflows.activations import layer_suffix

    rid, run, sc = c.id(name), c.run(name), c.sc
    title = "activations-parts" if parts else "activations"
    layers = None
    if parts:
        sel = fsr_module(c.sc.train.get("arch", "resnet18"))
        layers = [f"{sel}.robust", f"{sel}.nonrobust", f"{sel}.recalibrated"]
    # every model under one objective (the scale's PGD on the final logits' cross-entropy), a model with a CIFS
    # mask differentiated through it: NR over-activation compared between models under matched attacks
    options = ActivationOptions(**({} if c.threat_model == "linf" else c.budget()), attack=sc.act_attack,
                                n=sc.act_n, layers=layers, follow_mask=method in SELECTING, data=c.data,
                                data_root=c.data_root, seed=c.seed, device=c.device,
                                out=str(run / "parts") if parts else None)
    record = f"activations{layer_suffix(layers[0])}.json" if parts else "activations.json"
    return Stage(f"{title} {rid.label}", rid, "activations", ActivationJob(run, options, record), c.progress)


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
    models = models_for(methods) if methods else paper_models(with_cas, cifs_scratch)
    compared = eval_models or [m for m, opts, _ in models if not opts.get("natural")]
    for k in range(seeds):
        c = _Ctx(Path(out), k, sc, seed + k, data, data_root, device, bf16, progress, threat_model)
        trains = [_train_stage(c, name, method, warm) for name, method, warm in models]
        at = next((st for st in trains if st.id.name == "at"), None)
        stages += trains
        if controls and at is not None:
            stages += [_control_stage(c, at), _activations_stage(c, "random", "random")]
        method_of = {m: opts["method"] for m, opts, _ in models}
        for name in compared:
            stages += (_eval_stages(c, name, method_of.get(name, name), [method_of.get(n, n) for n in compared])
                       + [_activations_stage(c, name, method_of.get(name, name))])
            if method_of.get(name, name) == "fsr":
                stages.append(_activations_stage(c, name, "fsr", parts=True))
    return _order(stages)


_CORE = ("standard", "at", "cifs-nat", "cifs", "random")


def _order(stages: list[Stage]) -> list[Stage]:
    """Core comparison first (train, then study), then CAS and CIFS-from-scratch, then AutoAttack last:
    a reproduction cut short still has its main figures. Within a group, seed by seed."""
    def key(st: Stage) -> tuple[int, int]:
        core = st.id.name in _CORE
        seed_rank = min(st.id.index, 1)
        if st.kind == "aa":
            return (4, seed_rank)
        if st.kind == "train":
            return (0 if core else 2, seed_rank)
        return (1 if core else 3, seed_rank)
    return sorted(stages, key=key)  # stable: keeps the model order inside each group


@locks_out
def reproduce(out: str | Path, scale: str | None = None, *, data: str | None = None, data_root: str | None = None,
              with_cas: bool | None = None, cifs_scratch: bool | None = None, seed: int | None = None,
              seeds: int | None = None, only: str | None = None, device: str | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              on_stage: Callable[[str, str, float], None] | None = None, time_limit: float | None = None,
              bf16: bool | None = None, threat_model: str | None = None, jobs: int = 1) -> dict:
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
    jobs: run the seeds in this many processes at a time (`seed_jobs`, as `series --jobs`), each with cores /
    jobs threads; same folders and one pipeline.json; the report is written once every seed has stopped.
    """
    from chanscope.errors import check_threat_model
    from chanscope.workflows import seed_jobs

    if threat_model is not None:
        threat_model = check_threat_model(threat_model)
    if scale is not None:
        scale_named(scale)
    if only not in (None, "train"):
        raise ChanscopeError(f"only={only!r}: give 'train' (train every model and control, nothing else) or none")
    check_positive_int(jobs, "jobs")
    out = writable_dir(out)
    record = StudyRecord.load(out / "pipeline.json")
    seed_jobs.merge_seed_records(record)  # what the seeds' processes of a cut --jobs run finished
    opts = study_options(record, {"scale": scale, "data": data, "seed": seed, "bf16": bf16, "with_cas": with_cas,
                                  "cifs_scratch": cifs_scratch, "seeds": seeds, "threat_model": threat_model})
    scale, seed, bf16 = opts["scale"], opts["seed"], opts["bf16"]
    data = None if opts["data"] == "embedded" else opts["data"]
    spec = {"out": str(out), "scale": scale, "data": data, "data_root": data_root, "with_cas": opts["with_cas"],
            "cifs_scratch": opts["cifs_scratch"], "seed": seed, "seeds": opts["seeds"], "device": device,
            "bf16": bf16, "threat_model": opts["threat_model"], "only": only}
    stages = _stages(spec, progress)
    check_runs(stages)
    from chanscope.io import versions

    record.notes.update({"scale": scale, "scale_settings": SCALES[scale].settings(), "data": opts["data"],
                         "with_cas": opts["with_cas"], "seed": seed, "bf16": bf16, "versions": versions()})
    record.options = opts
    record.save()  # before any stage: a cut training is of these options
    seed_jobs.run_seeds(Study(record, stages), spec, jobs, on_stage, time_limit)
    if only is None:
        from chanscope.workflows.report import write_outputs

        write_outputs(out, record, runs=[s.id for s in stages if s.kind in ("eval", "activations")])
    record.save()
    return record.to_dict()


def _stages(spec: dict, progress: Callable[[str, int, int], None] | None) -> list[Stage]:
    """The study's stages from its resolved options (`reproduce`'s spec; only "train": the trainings and
    controls)."""
    stages = plan(Path(spec["out"]), spec["scale"], data=spec["data"], data_root=spec["data_root"],
                  with_cas=spec["with_cas"], cifs_scratch=spec["cifs_scratch"], seed=spec["seed"],
                  seeds=spec["seeds"], device=spec["device"], progress=progress, bf16=spec["bf16"],
                  threat_model=spec["threat_model"])
    return [st for st in stages if st.kind == "train"] if spec["only"] == "train" else stages


def seed_part(spec: dict, progress: Callable[[str, int, int], None] | None = None) -> list[Stage]:
    """The stages of the seed a `--jobs` worker runs, from the spec `reproduce` gives `seed_jobs`."""
    return Study(StudyRecord(Path(spec["out"]) / "pipeline.json"), _stages(spec, progress)).part(spec["index"]).stages
