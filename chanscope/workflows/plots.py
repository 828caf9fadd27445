"""The paper's figures from run folders' CSVs (plotting never retrains or re-attacks).

Each function returns the data it drew as a DataFrame and writes <name>.png, <name>.pdf and
<name>.csv into `out`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from chanscope.errors import ChanscopeError  # noqa: E402
from chanscope.io import atomic_write_bytes, atomic_write_csv, read_json  # noqa: E402
from chanscope.observe.analysis import most_and_least_robust  # noqa: E402

__all__ = ["images_used", "nr_channels", "class_alignment", "class_robustness", "training_curves", "read_run_csv",
           "PALETTE"]

PALETTE = sns.color_palette("colorblind")
_HINT = {
    "channels.csv": "run `chanscope activations --model {run}/best.pt` first",
    "classes.csv": "run `chanscope activations --model {run}/best.pt` first",
    "eval.csv": "run `chanscope eval --model {run}/best.pt` first",
    "metrics.csv": "train it with `chanscope train --out {run}` first",
}


def read_run_csv(run: str | Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A run's CSV, or a one-line error naming what is missing and how to make it. `run` may also be one
    layer's file of a run that recorded several (e.g. channels-layer4.1.select.robust.csv for `name`
    channels.csv)."""
    run = Path(run)
    if run.is_file() and run.name.startswith(Path(name).stem) and run.suffix == ".csv":
        run, name = run.parent, run.name
    if not run.is_dir():
        raise ChanscopeError(f"run folder {str(run)!r} does not exist")
    p = run / name
    if not p.is_file():
        raise ChanscopeError(f"{run} has no {name}; " + _HINT.get(name, "create it first").format(run=run))
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ChanscopeError(f"{p} is not a readable CSV ({e}); regenerate it") from None
    missing = [c for c in (columns or []) if c not in df.columns]
    if missing or df.empty:
        raise ChanscopeError(f"{p} is incomplete (missing columns {missing or 'rows'}); regenerate it")
    return df


def _save(fig, out: Path, name: str, data: pd.DataFrame) -> pd.DataFrame:
    import io

    out = Path(out)
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue())
    plt.close(fig)
    atomic_write_csv(out / f"{name}.csv", data)
    return data


def images_used(run: str | Path, stage: str = "activations") -> str:
    """Which test images a run's figure or table was computed on, e.g. '300 test images, pgd10 (activations)'.

    stage: activations (channels.csv / classes.csv) or eval (eval.csv)."""
    run = Path(run)
    try:
        if stage == "eval":
            ev = pd.read_csv(run / "eval.csv")
            row = ev[ev["class"] == "all"].iloc[0]
            return f"{int(row.n)} test images (eval)"
        # one layer's CSV of a multi-layer run (channels-<layer>.csv): its activations-<layer>.json
        meta = read_json(run.parent / f"activations-{run.stem.split('-', 1)[1]}.json" if run.suffix == ".csv"
                         else run / "activations.json")
        return f"{meta['data']['n_used']} test images, {meta['attack']['name']} (activations)"
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # pandas' ParserError is a ValueError
        return f"{stage} stage"


def _label(run: Path) -> str:
    """A run folder's name; for one layer's CSV of a run, the folder and the layer (parts layer4.1.select.robust)."""
    run = Path(run)
    if run.suffix == ".csv":
        return f"{run.parent.name} {run.stem.split('-', 1)[-1]}"
    return run.name


def _labels(runs: list[str | Path]) -> list[str]:
    """Run folder names, with the parent folder where two runs share a name (runs-a/at vs runs-b/at)."""
    names = [_label(Path(r)) for r in runs]
    return [f"{Path(r).parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]


def nr_channels(runs: list[str | Path], out: str | Path, class_name: str | None = None,
                name: str = "nr_channels", normalize: bool = True) -> pd.DataFrame:
    """Channels sorted by relevance (x) against natural and adversarial magnitude (y), NR region shaded.

    All classes: channels are ranked by relevance within each class and magnitudes are averaged over
    classes at each rank; the shaded NR region spans the mean number of NR channels. With `normalize`,
    each model's magnitudes are divided by its mean natural magnitude, so models whose features differ in
    scale (CIFS multiplies by a softmax mask that sums to 1) share one y axis; the CSV keeps both.
    """
    cols = ["class", "class_name", "channel", "relevance", "pr_nr", "mag_nat", "mag_adv"]
    frames = []
    for run, label in zip(runs, _labels(runs)):
        ch = read_run_csv(run, "channels.csv", cols)
        if class_name is not None:
            if class_name not in set(ch.class_name):
                raise ChanscopeError(f"class {class_name!r} not in {run}; classes: {', '.join(ch.class_name.unique())}")
            ch = ch[ch.class_name == class_name]
        ch = ch.sort_values(["class", "relevance"]).copy()
        ch["rank"] = ch.groupby("class").cumcount()
        g = ch.groupby("rank").agg(relevance=("relevance", "mean"), mag_nat=("mag_nat", "mean"),
                                   mag_adv=("mag_adv", "mean")).reset_index()
        g["n_nr"] = float((ch.pr_nr == "NR").groupby(ch["class"]).sum().mean())
        scale = float(g.mag_nat.mean()) if normalize and g.mag_nat.mean() > 0 else 1.0
        g["plot_nat"], g["plot_adv"] = g.mag_nat / scale, g.mag_adv / scale
        g.insert(0, "model", label)
        frames.append(g)
    data = pd.concat(frames, ignore_index=True)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), sharey=True, squeeze=False)
    for ax, run, (model, g) in zip(axes[0], runs, data.groupby("model", sort=False)):
        ax.axvspan(-0.5, g.n_nr.iloc[0] - 0.5, color="0.88", label="NR channels (relevance < 0)")
        ax.plot(g["rank"], g.plot_nat, color=PALETTE[0], lw=1.4, label="natural")
        ax.plot(g["rank"], g.plot_adv, color=PALETTE[3], lw=1.4, label="adversarial")
        ax.set_title(f"{model}\n{images_used(run)}", fontsize=9)  # each panel says which images it shows
        ax.set_xlabel("channel, sorted by relevance")
    axes[0][0].set_ylabel("magnitude / model's mean natural magnitude" if normalize else "mean activation magnitude")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Channel magnitudes vs relevance ({class_name or 'all classes'})", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out), name, data)


def class_alignment(run: str | Path, out: str | Path, classes: list[str] | None = None,
                    name: str = "class_alignment") -> pd.DataFrame:
    """Magnitude against relevance per channel for the most and least robust class (or `classes`)."""
    ch = read_run_csv(run, "channels.csv", ["class_name", "channel", "relevance", "mag_nat", "mag_adv"])
    cl = read_run_csv(run, "classes.csv", ["class_name", "adv_acc", "spearman_nat", "spearman_adv"])
    if classes:
        unknown = [c for c in classes if c not in set(cl.class_name)]
        if unknown:
            raise ChanscopeError(f"unknown classes {unknown}; classes: {', '.join(cl.class_name)}")
        chosen = list(classes)
    else:
        chosen = list(most_and_least_robust(cl))
    data = ch[ch.class_name.isin(chosen)][["class_name", "channel", "relevance", "mag_nat", "mag_adv"]].copy()
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.6), sharey=True, squeeze=False)
    for ax, c in zip(axes[0], chosen):
        g = data[data.class_name == c]
        r = cl[cl.class_name == c].iloc[0]
        ax.axvspan(min(g.relevance.min(), 0), 0, color="0.9")
        ax.scatter(g.relevance, g.mag_nat, s=10, color=PALETTE[0], label="natural", alpha=0.8)
        ax.scatter(g.relevance, g.mag_adv, s=10, color=PALETTE[3], label="adversarial", alpha=0.8, marker="x")
        ax.set_title(f"{c}: robust acc {r.adv_acc:.1f}%\nSpearman nat {r.spearman_nat:.2f}, adv {r.spearman_adv:.2f}",
                     fontsize=9)
        ax.set_xlabel("channel relevance")
    axes[0][0].set_ylabel("mean activation magnitude")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Magnitude vs relevance, {_label(Path(run))} (robust accuracy: {images_used(run)})", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out), name, data.assign(model=_label(Path(run))))


def class_robustness(runs: list[str | Path], out: str | Path, attack: str | None = None,
                     name: str = "class_robustness") -> pd.DataFrame:
    """Per-class natural and robust accuracy, models side by side (robust: `attack`, default the first
    PGD attack of each eval.csv)."""
    frames = []
    for run, label in zip(runs, _labels(runs)):
        ev = read_run_csv(run, "eval.csv", ["attack", "class", "natural_acc", "robust_acc"])
        atk = attack or next((a for a in ev.attack.unique() if a.startswith("pgd")), ev.attack.iloc[0])
        if atk not in set(ev.attack):
            raise ChanscopeError(f"{run}/eval.csv has no attack {atk!r}; it has {', '.join(ev.attack.unique())}")
        g = ev[(ev.attack == atk) & (ev["class"] != "all")][["class", "natural_acc", "robust_acc"]].copy()
        g.insert(0, "attack", atk)
        g.insert(0, "model", label)
        frames.append(g)
    data = pd.concat(frames, ignore_index=True)
    classes = list(dict.fromkeys(data["class"]))
    models = list(dict.fromkeys(data.model))
    fig, axes = plt.subplots(2, 1, figsize=(min(16.0, max(7.0, 0.5 * len(classes) * (1 + 0.4 * len(models)))), 5.5),
                             sharex=True)
    width = 0.8 / len(models)
    x = np.arange(len(classes))
    for i, m in enumerate(models):
        g = data[data.model == m].set_index("class").reindex(classes)
        for ax, col in zip(axes, ("natural_acc", "robust_acc")):
            ax.bar(x + (i - (len(models) - 1) / 2) * width, g[col], width, color=PALETTE[i % 10], label=m)
    axes[0].set_ylabel("natural accuracy %")
    axes[1].set_ylabel(f"robust accuracy %\n({data.attack.iloc[0]})")
    axes[1].set_xticks(x, classes, rotation=30)
    axes[0].legend(fontsize=8, ncol=len(models))
    fig.suptitle("Per-class accuracy (" + ", ".join(f"{lb}: {images_used(r, 'eval')}" for r, lb in
                                                 zip(runs, _labels(runs))) + ")", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out), name, data)


_LOSS_TITLES = {"ce": "cross-entropy", "joint": "joint loss: CE + probes' CE (CIFS, CAS)",
                "trades": "TRADES loss: CE + beta KL"}


def _loss_kind(run: Path) -> str:
    """The training loss a run's train_loss column holds (config.json), 'ce' where it does not say."""
    return str(read_json(Path(run) / "config.json").get("resolved", {}).get("loss", "ce"))


def training_curves(runs: list[str | Path], out: str | Path, name: str = "training") -> pd.DataFrame:
    """Training loss (one panel per kind of loss: CIFS's joint loss is not on cross-entropy's scale), natural
    and PGD accuracy per epoch; one legend below the panels: colours are models, line styles are what
    was measured."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cols = ["epoch", "train_loss", "train_acc", "test_nat_acc", "test_pgd_acc"]
    extra = ["val_nat_acc", "val_pgd_acc", "train_eval_nat_acc", "train_eval_pgd_acc"]
    frames = []
    for run, label in zip(runs, _labels(runs)):
        m = read_run_csv(run, "metrics.csv", cols)
        m = m[cols + [c for c in extra if c in m.columns]].copy()
        m.insert(0, "adversarial", bool(read_json(Path(run) / "config.json").get("resolved", {}).get("adversarial")))
        m.insert(0, "loss_kind", _loss_kind(Path(run)))
        m.insert(0, "model", label)
        frames.append(m)
    data = pd.concat(frames, ignore_index=True)
    kinds = list(dict.fromkeys(data.loss_kind))
    fig, axes = plt.subplots(1, len(kinds) + 2, figsize=(4.3 * (len(kinds) + 2), 3.6))
    loss_ax = dict(zip(kinds, axes))
    acc_axes = axes[len(kinds):]
    eval_mode = val_runs = False
    for i, (_, g) in enumerate(data.groupby("model", sort=False)):
        c = PALETTE[i % 10]
        loss_ax[g.loss_kind.iloc[0]].plot(g.epoch, g.train_loss, color=c, marker=".")
        # accuracy on the training batches: adversarial ones for AT, TRADES and the defences, so in the PGD panel
        acc_axes[1 if g.adversarial.iloc[0] else 0].plot(g.epoch, g.train_acc, color=c, ls="--")
        held = "val" if "val_pgd_acc" in g and g.val_pgd_acc.notna().any() else "test"
        val_runs = val_runs or held == "val"
        acc_axes[0].plot(g.epoch, g[f"{held}_nat_acc"], color=c, marker=".")
        acc_axes[1].plot(g.epoch, g[f"{held}_pgd_acc"], color=c, marker=".")
        if held == "val":  # the test subset, measured after the last epoch only
            acc_axes[0].plot(g.epoch, g.test_nat_acc, color=c, marker="*", ls="none", ms=9)
            acc_axes[1].plot(g.epoch, g.test_pgd_acc, color=c, marker="*", ls="none", ms=9)
        if "train_eval_pgd_acc" in g and g.train_eval_pgd_acc.notna().any():  # as test sees the model
            eval_mode = True
            acc_axes[0].plot(g.epoch, g.train_eval_nat_acc, color=c, ls=":")
            acc_axes[1].plot(g.epoch, g.train_eval_pgd_acc, color=c, ls=":")
    for kind, ax in loss_ax.items():
        ax.set_title(f"training loss: {_LOSS_TITLES.get(kind, kind)}", fontsize=9)
    acc_axes[0].set_title("natural accuracy %", fontsize=10)
    acc_axes[1].set_title("PGD accuracy %", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=PALETTE[i % 10], lw=2, label=m) for i, m in enumerate(dict.fromkeys(data.model))]
    handles += [Line2D([], [], color="0.3", marker=".", label="validation images" if val_runs else "test images")]
    if val_runs:
        handles.append(Line2D([], [], color="0.3", marker="*", ls="none", ms=9, label="test images (last epoch)"))
    handles.append(Line2D([], [], color="0.3", ls="--", label="training batches (train mode; adversarial ones in "
                                                              "the PGD panel)"))
    if eval_mode:
        handles.append(Line2D([], [], color="0.3", ls=":", label="training images (eval mode)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 6),
               fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, Path(out), name, data)


def ablation_plot(df: pd.DataFrame, out: str | Path, name: str = "ablation") -> pd.DataFrame:
    """Robust accuracy per setting, seeds as points, the AT baseline's mean as a line."""
    cells = df[df.setting != "AT baseline"]
    base = df[df.setting == "AT baseline"]
    settings = list(dict.fromkeys(cells.setting))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(settings) + 2), 3.8))
    for i, s in enumerate(settings):
        g = cells[cells.setting == s]
        ax.scatter([i] * len(g), g.robust_acc, color=PALETTE[0], zorder=3, label="CIFS setting (seeds)" if i == 0
                   else None)
        ax.plot([i - 0.2, i + 0.2], [g.robust_acc.mean()] * 2, color=PALETTE[0], lw=2)
    if len(base):
        ax.axhline(base.robust_acc.mean(), color=PALETTE[3], ls="--", label=f"AT baseline ({len(base)} seeds)")
        ax.axhspan(base.robust_acc.min(), base.robust_acc.max(), color=PALETTE[3], alpha=0.12)
    ax.set_xticks(range(len(settings)), settings, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"robust accuracy % ({df.attack.iloc[0] if len(df) else ''})")
    ax.legend(fontsize=8)
    ax.set_title("CIFS design switches vs PGD-AT, same budget", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out), name, df)


def series_plot(df: pd.DataFrame, gaps: pd.DataFrame, out: str | Path, name: str = "series") -> pd.DataFrame:
    """Robust accuracy (worst case per image) against training compute for AT and CIFS, seeds as points and
    95% intervals as bands; the AT - CIFS gap with its interval; the label leak (training-batch minus
    eval-mode PGD accuracy on training images)."""
    colors = {"at": PALETTE[0], "cifs": PALETTE[3]}
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for m, c in colors.items():
        g = df[df.method == m]
        axes[0].scatter(g.compute, g.worst_case, color=c, s=18, label=f"{m.upper()} (seeds)")
        axes[2].scatter(g.compute, g.label_leak, color=c, s=18, label=f"{m.upper()} (seeds; line: mean)")
        leak = g.groupby("compute").label_leak.mean()
        axes[2].plot(leak.index, leak.values, color=c)
        iv = gaps[gaps.what == m].sort_values("compute")
        axes[0].plot(iv.compute, iv.value, color=c)
        axes[0].fill_between(iv.compute, iv.lo, iv.hi, color=c, alpha=0.15)
    gap = gaps[gaps.what == "at - cifs"].sort_values("compute")
    axes[1].plot(gap.compute, gap.value, color="0.2", marker="o")
    axes[1].fill_between(gap.compute, gap.lo, gap.hi, color="0.5", alpha=0.2, label="95% interval")
    axes[1].axhline(0, color="0.5", lw=0.8, ls="--")
    titles = ("robust accuracy %, worst case per image", "AT - CIFS, points of robust accuracy",
              "label leak, points: training-batch - eval-mode PGD acc. on training images")
    budgets = df[["compute", "budget"]].drop_duplicates().sort_values("compute")
    ticks = [f"{b}\n{c / 1e6:.2g}M" for b, c in zip(budgets.budget, budgets.compute)]
    for ax, t in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xticks(budgets.compute, ticks, fontsize=8)  # one tick per budget, no decades
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("budget: images x epochs x PGD steps; compute in image passes")
        ax.set_title(t, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out), name, df)


def compare_plot(iv: pd.DataFrame, out: str | Path, name: str = "compare") -> pd.DataFrame:
    """Robust accuracy per method under its standard attack and under the adaptive worst case, side by side,
    with 95% intervals (over test images and seeds)."""
    drawn = ("standard attack", "adaptive worst case")
    own = iv[~iv.method.str.contains(" - ") & iv.under.isin(drawn)]
    methods = list(dict.fromkeys(own.method))
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 3.6))
    x = np.arange(len(methods))
    for j, (under, color) in enumerate(zip(drawn, (PALETTE[0], PALETTE[3]))):
        g = own[own.under == under].set_index("method").reindex(methods)
        ax.bar(x + (j - 0.5) * 0.38, g.value, 0.38, color=color, label=under,
               yerr=[g.value - g.lo, g.hi - g.value], capsize=3)
    ax.set_xticks(x, [m.upper() for m in methods])
    ax.set_ylabel("robust accuracy %")
    ax.set_title(f"one protocol, {int(own.seeds.max())} seed(s); bars: 95% intervals", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out), name, own)  # the drawn rows; compare_intervals.csv has them all


def sensitivity_plot(df: pd.DataFrame, out: str | Path, name: str = "sensitivity") -> pd.DataFrame:
    """One heat map per observation (rows) and relevance (columns): layer x attack cells coloured by AT's
    statistic minus the random control's; a cell where the paired AT - control interval includes 0 is marked
    with a cross (AT not told apart from it), an invalid control with 'inv.'; the verdict's initial is written in
    each cell (h: holds, n: does not hold, u: unclear, c: control invalid)."""
    if not len(df):
        raise ChanscopeError("the grid has no cells to draw")
    d = df.assign(effect=df.value - df.control_value)
    obs, rels = sorted(d.observation.unique()), list(dict.fromkeys(d.relevance))
    layers, attacks = list(dict.fromkeys(d.layer)), list(dict.fromkeys(d.attack))
    fig, axes = plt.subplots(len(obs), len(rels), figsize=(3.2 * len(rels) + 1, 0.45 * len(layers) * len(obs) + 1.8),
                             squeeze=False)
    initial = {"holds": "h", "does not hold": "n", "unclear": "u", "control invalid": "c"}
    for i, o in enumerate(obs):
        g = d[d.observation == o]
        lim = float(np.nanmax(np.abs(g.effect))) or 1.0
        for j, r in enumerate(rels):
            ax = axes[i][j]
            cell = g[g.relevance == r].set_index(["layer", "attack"])
            grid = np.array([[cell.effect.get((la, a), np.nan) for a in attacks] for la in layers])
            ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            for y, la in enumerate(layers):
                for x, a in enumerate(attacks):
                    if (la, a) not in cell.index:
                        continue
                    row = cell.loc[(la, a)]
                    mark = initial.get(row.verdict, "?") + (" x" if row.control_inside else "")
                    mark += "" if row.control_valid else " inv."
                    ax.text(x, y, mark, ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(attacks)), attacks, fontsize=7)
            ax.set_yticks(range(len(layers)), layers, fontsize=7)
            ax.set_title(f"obs. {o}, {r}", fontsize=8)
    fig.suptitle("AT minus random control per cell (x: the paired interval includes 0)", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(out), name, d)


def zoo_figure(df: pd.DataFrame, out: str | Path) -> pd.DataFrame:
    """`chanscope zoo`: each statistic (with its interval over images) against robust accuracy, one point per
    model coloured by method; the valid random controls' intervals as a grey band (a control that is not a
    valid control draws no band). Writes <out>.png/.pdf/.csv."""
    from chanscope.observe.population import STATISTICS

    out = Path(out)
    models = df[df["role"] == "model"]
    controls = df[(df["role"] == "control") & (df["control_valid"] == True)]  # noqa: E712 (NaN: not valid)
    stats = list(STATISTICS)
    fig, axes = plt.subplots(1, len(stats), figsize=(3.2 * len(stats), 3.2), squeeze=False)
    methods = sorted(models["method"].astype(str).unique())
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    for ax, s in zip(axes[0], stats):
        if len(controls) and controls[f"{s}_lo"].notna().any():
            ax.axhspan(controls[f"{s}_lo"].min(), controls[f"{s}_hi"].max(), color="0.85", zorder=0,
                       label="random control (valid)")
        for m in methods:
            d = models[models["method"].astype(str) == m]
            err = np.vstack([d[s] - d[f"{s}_lo"], d[f"{s}_hi"] - d[s]]).clip(min=0)
            ax.errorbar(d["worst_acc"], d[s], yerr=err, fmt="o", ms=4, color=colour[m], label=m, capsize=2)
        ax.set_xlabel("robust accuracy (%)")
        ax.set_title(s, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out.parent, out.name, df)
