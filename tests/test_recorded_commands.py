"""Every command a study records is the stage it ran: parsed by the `chanscope` command line and mapped by the
CLI's own flag mapping, it gives back the training config or the eval/activations options the stage runs with,
for a study under either threat model and with two seeds (issue 31: "a recorded stage reruns as pasted")."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path

import pytest
import typer
from chanscope.cli.activations import activation_options
from chanscope.cli.app import app
from chanscope.cli.eval import eval_options
from chanscope.cli.train import train_options

from chanscope.train import build_config
from chanscope.workflows.pipeline import plan

COMMANDS = typer.main.get_command(app).commands


def parse(command: str) -> tuple[str, dict]:
    words = shlex.split(command)
    assert words[0] == "chanscope", command
    ctx = COMMANDS[words[1]].make_context(words[1], words[2:])
    return words[1], dict(ctx.params)


def _only(params: dict, leave: set[str]) -> dict:
    return {k: v for k, v in params.items() if k not in leave}


@pytest.mark.parametrize("threat_model", ["linf", "l2"])
def test_every_recorded_command_parses_back_into_the_stage(tmp_path, threat_model):
    stages = plan(tmp_path, "micro", seeds=2, threat_model=threat_model)
    kinds = set()
    for st in stages:
        cmd, p = parse(st.command)
        kinds.add(cmd)
        if cmd == "train":
            given = train_options(**_only(p, {"preset", "out", "resume"}))
            assert build_config(p["preset"], **given) == st.job.config, st.command
            assert Path(p["out"]) == st.job.out
        elif cmd == "control":
            assert (Path(p["like"]), Path(p["out"])) == (st.job.like, st.job.out)
        elif cmd == "eval":
            assert p["model"] == st.job.model
            assert eval_options(**_keys_of(eval_options, p)) == st.job.options, st.command
        elif cmd == "activations":
            assert p["model"] == st.job.model
            assert activation_options(**_keys_of(activation_options, p)) == st.job.options, st.command
    assert kinds == {"train", "control", "eval", "activations"}


def test_every_option_field_has_a_flag_of_its_name():
    """A job's command is derived from its fields: each field of the options must be a flag of the command
    (field name = flag, FLAG_OF the exceptions), and each training option a study records a flag of train."""
    from dataclasses import fields

    from chanscope.workflows.jobs import _TRAIN_OWN, FLAG_OF, TRAIN_FLAGS
    from chanscope.workflows.options import ActivationOptions, EvalOptions

    def params(cmd: str) -> set[str]:
        return {p.name for p in COMMANDS[cmd].params}

    for cmd, opts in (("eval", EvalOptions), ("activations", ActivationOptions)):
        missing = {FLAG_OF.get(f.name, f.name) for f in fields(opts)} - params(cmd)
        assert not missing, (cmd, missing)
    assert set(TRAIN_FLAGS) | set(_TRAIN_OWN) <= params("train")


def _keys_of(f, p: dict) -> dict:
    """The parsed flags that `f` maps (the model and its source options are the command's own)."""
    names = set(inspect.signature(f).parameters)
    return {k: v for k, v in p.items() if k in names}


def test_a_changed_option_does_not_parse_back_equal(tmp_path):
    """The check above can fail: a command with one value changed gives another config."""
    stages = plan(tmp_path, "micro")
    st = next(s for s in stages if s.kind == "train")
    _, p = parse(st.command.replace("--seed 0", "--seed 5"))
    assert build_config(p["preset"], **train_options(**_only(p, {"preset", "out", "resume"}))) != st.job.config
    ev = next(s for s in stages if s.kind == "eval")
    _, p = parse(ev.command.replace("--n ", "--n 1"))
    assert eval_options(**_keys_of(eval_options, p)) != ev.job.options
