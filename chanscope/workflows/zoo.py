"""`chanscope zoo`: one protocol over a population of models, then the across-model analysis.

A zoo folder holds `models/<key>.json` (one finished measurement per model, written last, so a cut run
measures only what is missing), `zoo.csv` (one row per model and per random control), `zoo-analysis.csv`,
`zoo.md` and the figure. The protocol is recorded in `zoo.json`; a folder measured under another protocol is
refused in one line.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from chanscope.errors import DEFAULT_EPS, ChanscopeError, check_threat_model
from chanscope.io import atomic_write_csv, atomic_write_json, read_json
from chanscope.observe.population import STATISTICS, across_models, model_statistics
from chanscope.observe.verdicts import control_validity

__all__ = ["ZooModel", "Protocol", "parse_models", "run_zoo", "ZOO_COLUMNS"]

NORMALISATION_KWARGS = ("mean", "std")
ZOO_COLUMNS = (["model", "role", "method", "arch", "source", "spec", "weights_sha256", "normalisation", "n",
                "natural_acc", "robust_acc", "worst_acc", "aa_acc", "control_valid", "control_why"]
               + [f"{s}{e}" for s in STATISTICS for e in ("", "_lo", "_hi")] + ["seconds"])


@dataclass(frozen=True)
class ZooModel:
    """One model of the population: a spec `load_model` opens, with its weights and normalisation."""

    spec: str
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def file(self) -> Path | None:
        """The weights file this model is read from (a run folder's best.pt; the --weights file), if any."""
        from chanscope.checkpoint import resolve

        if Path(self.spec).exists():
            return resolve(self.spec).resolve()
        return Path(self.weights).expanduser().resolve() if self.weights and Path(self.weights).is_file() else None

    @property
    def key(self) -> str:
        """A file name that is the same for the same model on every run: a run folder and its best.pt are one
        model; models that differ in weights, mean or std are not."""
        f = self.file()
        tail = (f.parent.name if f is not None and f.name in ("best.pt", "last.pt") else
                Path(self.spec.rstrip("/")).name.split(":")[-1]) or "model"
        where = f if f is not None and Path(self.spec).exists() else self.spec
        ident = f"{where}|{self.weights}|{self.mean}|{self.std}"
        return _stem(tail, ident)

    def sha256(self) -> str | None:
        f = self.file()
        if f is None:
            return None
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def options(self, base: dict) -> dict:
        o = dict(base)
        if self.weights:
            o["weights"] = self.weights
        if self.mean is not None:
            o |= {"mean": list(self.mean), "std": list(self.std)}
        return o


@dataclass(frozen=True)
class Protocol:
    """What is measured on every model: one attack for the activation study and robust accuracy, its budget,
    the images, the layers (None: each model's penultimate representation), the relevance, and AutoAttack on a
    subset (aa_n images; 0: none)."""

    data: str = "embedded"
    attack: str = "pgd20"
    threat_model: str = "linf"
    eps: float | None = None
    n: int = 500
    layer: str | None = None
    relevance: str = "gradient"
    aa_n: int = 0
    seed: int = 0
    batch_size: int = 250
    n_boot: int = 200
    control_images: int = 2000  # training images a random control's BatchNorm and readout are fitted on
    model_options: dict = field(default_factory=dict)  # dataset, threat_model, model_dir of robustbench: specs

    def budget(self) -> float:
        return DEFAULT_EPS[self.threat_model] if self.eps is None else self.eps

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "model_options"} | {"eps": self.budget()}


def _floats(text: str, what: str, line: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ChanscopeError(f"model list line {line!r}: {what} must be numbers separated by commas") from None


def _parse_line(line: str) -> ZooModel:
    spec, *rest = line.split()
    kw: dict = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in ("weights", "mean", "std"):
            raise ChanscopeError(f"model list line {line!r}: {item!r} is not weights=PATH, mean=A,B,C or std=A,B,C")
        kw[key] = value if key == "weights" else _floats(value, key, line)
    if ("mean" in kw) != ("std" in kw):
        raise ChanscopeError(f"model list line {line!r}: give both mean= and std=")
    return ZooModel(spec, **kw)


def _run_folders(folder: Path) -> list[Path]:
    """A run folder itself, or every run folder inside a study folder (seed subfolders included)."""
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in ("best.pt", "last.pt")):
        return [folder]
    found = sorted(p.parent for p in folder.rglob("config.json")
                   if any((p.parent / f).is_file() for f in ("best.pt", "last.pt")))
    if not found:
        raise ChanscopeError(f"{str(folder)!r} holds no run folder (config.json with best.pt or last.pt); give run "
                             "or study folders, checkpoints or model specs")
    return found


def parse_models(specs: list[str] | None = None, file: str | Path | None = None) -> list[ZooModel]:
    """The population: repeated specs and the lines of a model list file (`SPEC [weights=PATH] [mean=A,B,C
    std=A,B,C]`, # comments), run and study folders expanded to their models; duplicates kept once."""
    lines = list(specs or [])
    if file is not None:
        p = Path(file)
        if not p.is_file():
            raise ChanscopeError(f"model list {str(p)!r} does not exist; give a file with one model spec per line")
        lines += [t.split("#")[0].strip() for t in p.read_text().splitlines()]
    models: list[ZooModel] = []
    for line in (t for t in lines if t):
        m = _parse_line(line)
        if ":" not in m.spec and not Path(m.spec).exists():
            raise ChanscopeError(f"model {m.spec!r} does not exist; give a checkpoint, run or study folder, or a "
                                 "source spec (torchvision:NAME, timm:NAME, robustbench:NAME, module:callable)")
        if Path(m.spec).is_dir():
            models += [ZooModel(str(f)) for f in _run_folders(Path(m.spec))]
        else:
            models.append(m)
    if not models:
        raise ChanscopeError("no models given; use --model SPEC (repeatable) or --models-file FILE")
    seen: dict[str, ZooModel] = {}
    for m in models:  # a model named twice (a run folder and its best.pt) is measured once
        seen.setdefault(m.key, m)
    return list(seen.values())


def _method_arch(net: nn.Module, spec: str) -> tuple[str, str]:
    src = getattr(net, "source", {}) or {}
    arch = getattr(net, "arch", None)
    method = None
    if Path(spec).exists():
        from chanscope.workflows.runs import run_config_of

        cfg = run_config_of(spec) or {}
        if not cfg and Path(spec).is_file() and Path(spec).suffix in (".pt", ".pth"):
            from chanscope.checkpoint import read_checkpoint

            cfg = read_checkpoint(spec).get("config") or {}
        method = cfg.get("method")
        arch = arch or cfg.get("arch")
    if arch is None:
        inner = getattr(net, "model", net)
        arch = type(inner).__name__
    return method or src.get("source", "model"), str(arch)


def random_twin(net: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, seed: int = 0) -> nn.Module:
    """A random control of `net`'s architecture: every parameter re-initialised, BatchNorm statistics estimated
    on the training images, and (chanscope's networks) the linear classifier fitted on their random features."""
    from chanscope.workflows.training import calibrate_batchnorm, fit_readout

    twin = copy.deepcopy(net).cpu()
    torch.manual_seed(seed)
    for m in twin.modules():
        if hasattr(m, "reset_parameters") and m is not twin:
            m.reset_parameters()
    calibrate_batchnorm(twin, x_train)
    twin.eval()
    if hasattr(twin, "forward_features") and isinstance(getattr(twin, "linear", None), nn.Linear):
        fit_readout(twin, x_train, y_train)
    return twin.to(next(net.parameters()).device).eval()


def _measure(net: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str], p: Protocol,
             with_aa: bool) -> tuple[dict, dict]:
    """(row numbers, per-image records) of one model under protocol p."""
    from chanscope.attacks.suite import has_probes, parse_attacks
    from chanscope.observe.hooks import default_layer
    from chanscope.workflows.activations import study_activations
    from chanscope.workflows.evaluate import evaluate

    dev = next(net.parameters()).device
    layer = p.layer or default_layer(net, x[:2].to(dev))
    spec = parse_attacks(p.attack, p.budget(), threat_model=p.threat_model)[0]
    res, _ = study_activations(net, x, y, classes, [layer], spec, relevance=p.relevance, batch_size=p.batch_size,
                               seed=p.seed)
    ex = res[0].examples
    row = model_statistics(ex, n_boot=p.n_boot, rng=p.seed)
    worst = ex["adv_ok"].astype(bool)
    if has_probes(net):  # the adaptive attack through probes and mask counts too, per image
        ada = parse_attacks("adaptive20", p.budget(), threat_model=p.threat_model, follow=True)
        ev = evaluate(net, x, y, classes, ada, batch_size=p.batch_size, seed=p.seed).examples
        worst &= ev["adaptive20"].to_numpy().astype(bool)
    row["worst_acc"] = 100 * float(worst.mean())
    row["aa_acc"] = float("nan")
    if with_aa and p.aa_n:
        k = min(p.aa_n, len(y))
        aa = parse_attacks("aa", p.budget(), threat_model=p.threat_model)
        row["aa_acc"] = float(evaluate(net, x[:k], y[:k], classes, aa, batch_size=p.batch_size,
                                       seed=p.seed).overall()["robust_acc"].iloc[0])
    row["layer"] = layer
    return row, ex


def check_protocol(p: Protocol) -> None:
    """Every option of the protocol checked before anything is read or written."""
    from chanscope.attacks.suite import parse_attacks
    from chanscope.errors import check_positive_int
    from chanscope.names import RELEVANCE_METHODS

    check_threat_model(p.threat_model)
    if "," in p.attack:
        raise ChanscopeError(f"--attack {p.attack!r}: the zoo takes one attack (the worst case adds the adaptive "
                             "attack for models with probes); run another zoo folder for another attack")
    parse_attacks(p.attack, p.budget(), threat_model=p.threat_model)
    if p.relevance not in RELEVANCE_METHODS:
        raise ChanscopeError(f"unknown relevance {p.relevance!r}; known: {', '.join(RELEVANCE_METHODS)}")
    check_positive_int(p.n, "n")
    if p.aa_n < 0:
        raise ChanscopeError(f"--aa-n {p.aa_n} must be 0 (no AutoAttack) or a number of images")


def _measured(out: Path, m: ZooModel) -> bool:
    """Measured before, from the same weights (a model retrained into the same file is measured again)."""
    f = out / "models" / f"{m.key}.json"
    if not f.is_file():
        return False
    sha = read_json(f).get("weights_sha256")
    return sha is None or m.file() is None or sha == m.sha256()


def _check_protocol(out: Path, p: Protocol) -> None:
    """The folder's protocol is this one; a folder with no model measured yet takes the new one."""
    rec = out / "zoo.json"
    measured = any((out / "models").glob("*.json"))
    if rec.is_file() and measured:
        before = read_json(rec).get("protocol")
        if before != p.record():
            diff = sorted(k for k in p.record() if (before or {}).get(k) != p.record()[k])
            raise ChanscopeError(f"{str(out)!r} was measured under another protocol ({', '.join(diff)} differ); "
                                 "give the same options or another --out")
    else:
        atomic_write_json(rec, {"protocol": p.record()})


def run_zoo(models: list[ZooModel], p: Protocol, out: str | Path, *, device: str | None = None,
            progress: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure every model not yet measured in `out`, one random control per architecture, then write zoo.csv,
    the analysis, zoo.md and the figure; returns (zoo table, analysis table)."""
    from chanscope.data import load_data
    from chanscope.models.sources import load_model
    from chanscope.workflows.runs import check_fits, test_subset, writable_dir

    check_protocol(p)
    data = load_data(p.data)
    x, y = test_subset(data, p.n, p.seed)
    out = writable_dir(out)
    _check_protocol(out, p)
    (out / "models").mkdir(exist_ok=True)
    say = progress or (lambda s: None)
    todo = [m for m in models if not _measured(out, m)]
    say(f"zoo: {len(models)} models, {len(models) - len(todo)} measured before, {len(todo)} to measure "
        f"({p.attack} at eps {p.budget():.4g} {p.threat_model}, {len(y)} images)")
    t_start, controlled = time.time(), _controlled(out)
    for i, m in enumerate(todo):
        t0 = time.time()
        net = load_model(m.spec, device, **m.options(p.model_options))
        check_fits(net, tuple(x.shape[1:]), data.num_classes, m.spec, f"data {data.name!r}")
        method, arch = _method_arch(net, m.spec)
        arch = _arch_key(net, arch)
        row, _ = _measure(net, x, y, list(data.classes), p, with_aa=True)
        src = getattr(net, "source", {}) or {}
        rec = {"model": m.key, "role": "model", "method": method, "arch": arch, "source": src.get("source"),
               "spec": m.spec, "weights_sha256": src.get("weights_sha256") or m.sha256(),
               "normalisation": str(src.get("normalisation")), "n": len(y), **row,
               "seconds": round(time.time() - t0, 1)}
        if arch not in controlled:  # one random control per architecture, made with its first model
            _control(net, data, x, y, p, arch, out)
            controlled.add(arch)
        atomic_write_json(out / "models" / f"{m.key}.json", rec)  # last: a cut model is measured again
        eta = (time.time() - t_start) / (i + 1) * (len(todo) - i - 1)
        say(f"[{i + 1}/{len(todo)}] {m.spec}: natural {rec['natural_acc']:.1f}%, {p.attack} "
            f"{rec['robust_acc']:.1f}%, worst {rec['worst_acc']:.1f}% ({rec['seconds']:.0f} s; ETA {eta:.0f} s)")
    return write_outputs(out, p)


def _arch_key(net: nn.Module, arch: str) -> str:
    """The architecture as the controls and the analysis group by: chanscope's registry name with its options
    (a CIFS ResNet is not a plain one) but not its input normalisation (two seeds' ResNets with their own
    data means are one architecture), else the class name with its parameter count (WRN-28-10 is not
    WRN-70-16)."""
    kw = getattr(net, "model_kwargs", None)
    if kw is not None:
        opts = ",".join(f"{k}={v}" for k, v in sorted(kw.items())
                        if v not in (None, False) and k not in NORMALISATION_KWARGS)
        return f"{arch}({opts})" if opts else arch
    return f"{arch}-{sum(t.numel() for t in net.parameters()) / 1e6:.2f}M"


def _stem(name: str, ident: str) -> str:
    """A file stem: `name` made safe and cut to 40 characters, then a hash of `ident`, so that two identities
    whose names share their first 40 characters never share a file."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
    return f"{safe}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def _control_name(arch: str) -> str:
    """The control's file stem: readable, and apart for every architecture key."""
    return f"control-{_stem(arch, arch)}"


def _control(net: nn.Module, data, x, y, p: Protocol, arch: str, out: Path) -> dict:
    t0 = time.time()
    from chanscope.data import balanced_subset

    idx = balanced_subset(data.y_train, min(p.control_images, len(data.y_train)), data.num_classes, p.seed)
    twin = random_twin(net, data.x_train[idx], data.y_train[idx], seed=p.seed)
    row, ex = _measure(twin, x, y, list(data.classes), p, with_aa=False)
    v = control_validity(ex)
    rec = {"model": _control_name(arch), "role": "control", "method": "random", "arch": arch,
           "source": "random twin", "spec": f"random {arch}", "weights_sha256": None, "normalisation": "as the model",
           "n": len(y), **row, "control_valid": v.valid, "control_why": str(v), "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out / "models" / f"{_control_name(arch)}.json", rec)
    return rec


def _plain_arch(arch: str) -> str:
    """An architecture key without the normalisation options that folders of an earlier chanscope put in it."""
    return re.sub(r"(,?)(mean|std)=\[[^\]]*\]", "", str(arch)).replace("(,", "(")


def _controlled(out: Path) -> set[str]:
    return {_plain_arch(read_json(f)["arch"]) for f in Path(out, "models").glob("control-*.json")}


def read_zoo(out: str | Path) -> pd.DataFrame:
    rows = [read_json(f) for f in sorted(Path(out, "models").glob("*.json"))]
    for r in rows:
        r["arch"] = _plain_arch(r["arch"])
    df = pd.DataFrame(rows)
    for c in ZOO_COLUMNS:
        if c not in df:
            df[c] = np.nan
    return df[ZOO_COLUMNS + [c for c in df.columns if c not in ZOO_COLUMNS]]


def write_outputs(out: str | Path, p: Protocol) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = Path(out)
    df = read_zoo(out)
    atomic_write_csv(out / "zoo.csv", df)
    models = df[df["role"] == "model"].reset_index(drop=True)
    analysis = across_models(models, target="worst_acc", rng=p.seed)
    atomic_write_csv(out / "zoo-analysis.csv", analysis)
    (out / "zoo.md").write_text(_markdown(df, analysis, p))
    if len(models):
        from chanscope.workflows.plots import zoo_figure

        zoo_figure(df, out / "zoo-figure")
    return df, analysis


def wilson(pct: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's 95% score interval (in %) of an accuracy of pct% measured on n images."""
    if not n or not np.isfinite(pct):
        return float("nan"), float("nan")
    q = pct / 100
    mid = (q + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(q * (1 - q) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (mid - half), 100 * (mid + half)


def _acc_cell(pct: float, n: int) -> str:
    lo, hi = wilson(pct, n)
    return f"{pct:.1f} [{lo:.1f}, {hi:.1f}]"


def _markdown(df: pd.DataFrame, analysis: pd.DataFrame, p: Protocol) -> str:
    r = p.record()
    lines = [f"# Zoo: {int((df['role'] == 'model').sum())} models", "",
             f"Protocol: {r['attack']} at eps {r['eps']:.4g} ({r['threat_model']}), {r['n']} test images of "
             f"{r['data']}, relevance {r['relevance']}, layer {r['layer'] or 'each model penultimate'}; robust "
             "accuracy is the per-image worst case (the adaptive attack included for models with probes).", "",
             "## Does a channel statistic predict robust accuracy beyond natural accuracy?", "",
             "| statistic | models | Spearman | partial (natural acc) [95%] | p (perm.) | p (Holm) | partial (+arch) "
             "| partial (+method) [95%], p | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a in analysis.itertuples():
        within = (f"{a.partial_method:+.2f} [{a.partial_method_lo:+.2f}, {a.partial_method_hi:+.2f}], "
                  f"{a.p_method:.3f}" if np.isfinite(a.partial_method) else "-")
        lines.append(f"| {a.statistic} | {a.n_models} | {a.rho:+.2f} | {a.partial:+.2f} [{a.partial_lo:+.2f}, "
                     f"{a.partial_hi:+.2f}] | {a.p_perm:.3f} | {a.p_holm:.3f} | {a.partial_arch:+.2f} | {within} "
                     f"| {a.verdict} |")
    lines += ["", "Verdict: the partial correlation on natural accuracy (interval excludes 0, Holm p < 0.05). "
              "\"+method\": the same with the training method as a covariate, whether the statistic predicts "
              "robustness within method families; beside the verdict, not part of it."]
    lines += ["", "## Models (sorted by robust accuracy)", "",
              "Accuracies in % with Wilson 95% intervals over the test images; statistics' intervals in zoo.csv.", "",
              "| model | role | method | arch | natural | worst | " + " | ".join(STATISTICS) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(STATISTICS)]
    for r_ in df.sort_values("worst_acc", ascending=False).itertuples():
        stats = " | ".join(f"{getattr(r_, s):.3f}" for s in STATISTICS)
        role = r_.role if r_.role == "model" else f"control ({'valid' if r_.control_valid else 'INVALID'})"
        lines.append(f"| {r_.model} | {role} | {r_.method} | {r_.arch} | {_acc_cell(r_.natural_acc, int(r_.n))} | "
                     f"{_acc_cell(r_.worst_acc, int(r_.n))} | {stats} |")
    return "\n".join(lines) + "\n"
