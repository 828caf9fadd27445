from __future__ import annotations

import argparse
import errno
import json
import os

import pandas as pd
import pytest
import torch
from conftest import FIXTURES

import chanscope
from chanscope.checkpoint import save_checkpoint
from chanscope.errors import ChanscopeError
from chanscope.models import create_model
from chanscope.models.official import convert_official_state_dict, official_model_kwargs


@pytest.mark.parametrize("select", ["none", "cifs", "cas"])
def test_round_trip_gives_identical_logits(tmp_path, select):
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125, feature_select=select, mean=[0.4] * 3, std=[0.25] * 3,
                         probes=["linear", "nonlinear"]) if select == "cifs" else \
        create_model("resnet18", width=0.125, feature_select=select)
    model.train()
    model(torch.rand(8, 3, 32, 32), torch.arange(8))  # move BN statistics away from init
    model.eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = chanscope.load_model(tmp_path / "m.pt", device="cpu")
    x = torch.rand(5, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training and loaded.model_kwargs == model.model_kwargs
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # never needs arbitrary unpickling
    assert raw["arch"] == "resnet18"


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    model = create_model("resnet10", width=0.125)
    save_checkpoint(tmp_path / "ok.pt", model)
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "foreign.pt")  # needs arbitrary unpickling
    for name, pattern in [("missing.pt", "does not exist"), ("trunc.pt", "truncated or corrupt"),
                          ("text.pt", "not written by torch.save"), ("other.pt", "not a chanscope checkpoint"),
                          ("list.pt", "not a checkpoint dict"), ("foreign.pt", "pickles argparse.Namespace")]:
        with pytest.raises(ChanscopeError, match=pattern) as e:
            chanscope.load_model(tmp_path / name, device="cpu")
        msg = str(e.value)
        assert "\n" not in msg and len(msg.replace(str(tmp_path / name), "")) < 250, msg
    # architecture mismatch: weights of one arch under another's name
    obj = torch.load(tmp_path / "ok.pt", weights_only=True)
    obj["arch"] = "resnet18"
    torch.save(obj, tmp_path / "mismatch.pt")
    with pytest.raises(ChanscopeError, match="do not fit arch"):
        chanscope.load_model(tmp_path / "mismatch.pt", device="cpu")


@pytest.mark.parametrize("variant", ["plain", "cifs", "cas"])
def test_official_import_maps_every_key_and_shape(tmp_path, variant):
    """Key names and shapes come from the official architecture files (see fixtures/README.md)."""
    spec = json.loads((FIXTURES / "official_cifs_keys.json").read_text())[variant]
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randint(0, 5, s, generator=g) if k.endswith("num_batches_tracked")
              else torch.rand(s, generator=g) + 0.5) for k, s in spec.items()}
    kw = official_model_kwargs(sd)
    assert kw.get("feature_select", "none") == {"plain": "none", "cifs": "cifs", "cas": "cas"}[variant]
    if variant == "cifs":
        assert kw["probes"] == ["nonlinear", "linear"]
    converted = convert_official_state_dict(sd)
    model = create_model("resnet18", **kw)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    # every official tensor lands somewhere, unchanged
    assert sorted(t.sum().item() for k, t in converted.items() if not k.startswith("normalize.")) == \
        pytest.approx(sorted(t.sum().item() for t in sd.values()))
    torch.save({"state_dict": sd, "stop_epoch": 3, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "official.pt")
    loaded = chanscope.load_model(tmp_path / "official.pt", device="cpu")
    assert torch.equal(loaded.normalize.mean.flatten(), torch.zeros(3))
    with torch.no_grad():
        assert loaded(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_official_cifs_logits_equal_a_hand_forward(tmp_path):
    """Independent forward of an official-layout CIFS state dict, written from the paper's equations."""
    spec = json.loads((FIXTURES / "official_cifs_keys.json").read_text())["cifs"]
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, s in spec.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros(s, dtype=torch.long)
        elif k.endswith("running_var") or (k.endswith(".weight") and len(s) == 1):
            sd[k] = torch.rand(s, generator=g) * 0.5 + 0.75
        else:
            sd[k] = (torch.rand(s, generator=g) - 0.5) * (0.2 if len(s) > 1 else 0.1)
    torch.save({"state_dict": sd}, tmp_path / "o.pt")
    ours = chanscope.load_model(tmp_path / "o.pt", device="cpu")
    x = torch.rand(3, 3, 32, 32, generator=g)

    F = torch.nn.functional

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], False, 0.0, 1e-5)

    def block(t, p, stride):
        o = F.relu(bn(F.conv2d(t, sd[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
        o = bn(F.conv2d(o, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
        sc = bn(F.conv2d(t, sd[p + ".shortcut.0.weight"], stride=stride), p + ".shortcut.1") \
            if p + ".shortcut.0.weight" in sd else t
        return F.relu(o + sc)

    def probe(f, p, nonlinear):
        z = f.mean((2, 3))
        if nonlinear:
            z = F.softplus(F.linear(z, sd[p + ".Probe.Probe.0.fc.weight"], sd[p + ".Probe.Probe.0.fc.bias"]), beta=5)
        return F.linear(z, sd[p + ".Probe.Probe.1.weight"], sd[p + ".Probe.Probe.1.bias"])

    t = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    for li, stride in ((1, 1), (2, 2), (3, 2)):
        t = block(block(t, f"layer{li}.0", stride), f"layer{li}.1", 1)
    for i, (stride, nl) in enumerate(((2, True), (1, False))):
        f = block(t, f"layer4.{i}", stride).detach().requires_grad_(True)
        logits = probe(f, f"layer4.{i}", nl)
        top = logits.topk(2, 1).indices
        grad = torch.autograd.grad(logits.gather(1, top).sum(), f)[0]
        t = (f * F.softmax(grad.sum((2, 3)), 1)[:, :, None, None]).detach()
    ref = F.linear(F.avg_pool2d(t, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])
    with torch.no_grad():
        got = ours(x)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


class _FullDisk:
    """A file on a disk that fills after `room` bytes, as os.fdopen returns it (write raises ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


@pytest.mark.parametrize("what", ["checkpoint", "csv"])
def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, what):
    """torch.save hides ENOSPC in a RuntimeError ('unexpected pos'); the error must still say the disk is full."""
    import chanscope.io as cio

    target = tmp_path / ("last.pt" if what == "checkpoint" else "eval.csv")
    model = create_model("resnet10", width=0.125)
    save_checkpoint(target, model) if what == "checkpoint" else target.write_text("attack\npgd20\n")
    before = target.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(cio.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), room=1000))
    with pytest.raises(cio.WriteError, match=r"No space left on device\); free disk space") as e:
        if what == "checkpoint":
            save_checkpoint(target, create_model("resnet10", width=0.25))
        else:
            cio.atomic_write_csv(target, pd.DataFrame({"attack": ["fgsm"] * 500}))
    assert "\n" not in str(e.value) and e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    # a folder that cannot be made is the same kind of one-line error
    monkeypatch.undo()
    (tmp_path / "file").write_text("")
    with pytest.raises(cio.WriteError, match="cannot write .*pick another"):
        cio.atomic_write_bytes(tmp_path / "file" / "sub" / "x.csv", b"x")
