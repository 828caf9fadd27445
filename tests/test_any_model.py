"""Any image classifier: torchvision, timm, RobustBench, TorchScript, exported programs and factories, through the
CLI and the Python API, checked against independent computations (no network: RobustBench's download is
replaced by a failure, as on a machine without internet)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn as nn
from chanscope.cli.app import app
from typer.testing import CliRunner

import chanscope
from chanscope.data import load_data
from chanscope.errors import ChanscopeError
from chanscope.models.wrappers import inner

runner = CliRunner()
FACTORY = '''
import torch.nn as nn

def small():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))

def three_d():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))

class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small()
    def forward(self, x):
        return self.net(x), x.mean()

def pair():
    return Pair()

def needs_arg(num_classes):
    return small()

class Scaled(nn.Module):  # a Linear classifier followed by a temperature
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)
    def forward(self, x):
        return self.fc(self.features(x)) / 2.5

def scaled():
    return Scaled()

def conv_head():  # timm's resnetv2 shape: global pooling, then a 1x1 convolution as the classifier, flattened
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 10, 1),
                         nn.Flatten())

def squeeze_head():  # squeezenet's shape: a 1x1 convolution, ReLU, then pooling: no module's output is the logits
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One file per source kind, each a randomly initialised model of 10 classes; and the source specs."""
    import timm
    import torchvision

    from chanscope.models.sources import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    d = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), d / "tv.pt")
    torch.save(timm.create_model("test_efficientnet", num_classes=10).state_dict(), d / "timm.pt")
    rb = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Sehwag2021Proxy_R18"]["model"]()
    (d / "rb" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": rb.state_dict()}, d / "rb" / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt")
    (d / "rbbad" / "cifar10" / "Linf").mkdir(parents=True)  # a file of another architecture under an entry's name
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=10).state_dict()},
               d / "rbbad" / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt")
    (d / "myzoo.py").write_text(FACTORY)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).eval()
    torch.jit.save(torch.jit.script(cnn), d / "ts.pt")
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(cnn, (torch.rand(4, 3, 32, 32),), dynamic_shapes={"input": {0: batch}})
    torch.export.save(ep, d / "ep.pt2")
    return d, {
        "torchvision": ("torchvision:resnet18", ["--weights", str(d / "tv.pt")]),
        "timm": ("timm:test_efficientnet", ["--weights", str(d / "timm.pt")]),
        "robustbench": ("robustbench:Sehwag2021Proxy_R18", ["--model-dir", str(d / "rb")]),
        "export": (str(d / "ep.pt2"), []),
        "factory": ("myzoo:small", []),
    }


def _cli_kwargs(extra: list[str]) -> dict:
    flags = dict(zip(extra[::2], extra[1::2]))
    return {k.lstrip("-").replace("-", "_"): v for k, v in flags.items()}


@pytest.mark.parametrize("kind", [pytest.param("torchvision", marks=pytest.mark.slow), "timm",
                                  pytest.param("robustbench", marks=pytest.mark.slow), "export", "factory"])
def test_activations_of_any_model_match_an_independent_hook_and_the_classifier(zoo, kind, tmp_path, monkeypatch):
    d, specs = zoo
    monkeypatch.syspath_prepend(str(d))
    spec, extra = specs[kind]
    res = runner.invoke(app, ["activations", "--model", spec, *extra, "--n", "20", "--attack", "pgd2",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "activations.json").read_text())
    assert meta["model_source"]["source"] == kind
    ch = pd.read_csv(tmp_path / "channels.csv")
    # the same model and images, measured here with a hook of our own on the classifier's input
    model = chanscope.load_model(spec, "cpu", **_cli_kwargs(extra))
    layer = meta["layer"]
    assert layer.endswith(":in"), layer
    clf = dict(inner(model).named_modules())[layer[:-3]]
    ds = load_data("embedded")
    from chanscope.workflows.runs import test_subset

    x, y = test_subset(ds, 20, 0)
    seen = []
    h = clf.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().abs()))
    with torch.no_grad():
        model(x)
    h.remove()
    mag = seen[0]
    for c in range(10):
        got = ch[ch["class"] == c].sort_values("channel").mag_nat.to_numpy()
        want = mag[y == c].mean(0).numpy()
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (kind, c)
        # gradient relevance at the classifier's input is its weight row
        rel = ch[ch["class"] == c].sort_values("channel").relevance.to_numpy()
        assert rel == pytest.approx(clf.weight[c].detach().numpy(), rel=1e-4, abs=1e-6), (kind, c)


@pytest.mark.parametrize("kind", ["torchvision", "factory", "torchscript"])
def test_eval_pgd_of_any_model_agrees_with_torchattacks(zoo, kind, tmp_path, monkeypatch):
    import torchattacks

    d, specs = zoo
    monkeypatch.syspath_prepend(str(d))
    spec, extra = specs.get(kind, (str(d / "ts.pt"), []))
    res = runner.invoke(app, ["eval", "--model", spec, *extra, "--attacks", "pgd3", "--n", "20",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    ev = pd.read_csv(tmp_path / "eval.csv")
    ours = float(ev[(ev.attack == "pgd3") & (ev["class"] == "all")].robust_acc.iloc[0])
    model = chanscope.load_model(spec, "cpu", **_cli_kwargs(extra))
    from chanscope.workflows.runs import test_subset

    x, y = test_subset(load_data("embedded"), 20, 0)
    atk = torchattacks.PGD(model, eps=8 / 255, alpha=0.8 / 255, steps=3, random_start=False)
    with torch.no_grad():
        nat_ok = model(x).argmax(1) == y
    adv_ok = model(atk(x, y)).argmax(1) == y
    assert ours == pytest.approx(100.0 * int((nat_ok & adv_ok).sum()) / len(y), abs=1e-9)


def test_layers_lists_shapes_and_the_default(zoo):
    d, specs = zoo
    spec, extra = specs["robustbench"]
    res = runner.invoke(app, ["layers", "--model", spec, *extra, "--dataset", "cifar10", "--threat-model", "Linf"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "(default)" in text and "input of Linear" in text and "512" in text


def test_the_python_api_on_a_module_and_a_dataset(zoo, tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    ds = load_data("embedded")
    idx = torch.arange(0, len(ds.y_test), 10)  # every class
    dataset = torch.utils.data.TensorDataset(ds.x_test[idx].float() / 255, ds.y_test[idx])
    s = chanscope.study(model, dataset, n=30, attack="pgd2")
    assert list(s.classes.columns)[:3] == ["layer", "class", "class_name"] and len(s.channels) == 10 * 512
    drawn = s.plot_nr_channels(tmp_path)
    assert (tmp_path / "nr_channels.png").is_file() and len(drawn) == 512
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    table = chanscope.evaluate(model, loader, ["fgsm"], n=30)
    assert set(table.attack) == {"fgsm"} and int(table[table["class"] == "all"].n.iloc[0]) == 30
    # the API checks its options as the commands do, before it reads the model (this spec does not exist)
    for bad, pattern in [({"relevance": "saliency"}, "unknown relevance 'saliency'"),
                         ({"relevance_on": "both"}, "`relevance_on` must be"), ({"threshold": 2.0}, "threshold"),
                         ({"attack": "pgd2,fgsm"}, "`attack` takes one attack"), ({"batch_size": 0}, "batch size")]:
        with pytest.raises(ChanscopeError, match=pattern):
            chanscope.study("no/such/model.pt", dataset, **bad)
    with pytest.raises(ChanscopeError, match="beta_atk"):
        chanscope.evaluate("no/such/model.pt", dataset, ["adaptive2"], beta_atk=-1)


def test_torchscript_is_evaluated_but_its_layers_are_refused_in_one_line(zoo, tmp_path):
    d, _ = zoo
    res = runner.invoke(app, ["activations", "--model", str(d / "ts.pt"), "--n", "20", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "TorchScript" in res.output and "torch.export" in res.output


@pytest.mark.parametrize("args, pattern", [
    (["--model", "hub:resnet18"], "unknown model source 'hub'"),
    (["--model", "torchvision:resnet19"], "torchvision has no model 'resnet19'"),
    (["--model", "timm:no_such_net"], "timm has no model 'no_such_net'"),
    (["--model", "robustbench:Nobody2020"], "RobustBench has no cifar10 Linf model 'Nobody2020'"),
    (["--model", "robustbench:Standard", "--model-dir", "{d}/empty"], "is not in"),
    (["--model", "torchvision:resnet18", "--weights", "{d}/timm.pt"], "first mismatch"),
    (["--model", "myzoo:three_d", "--layer", "1"], "outputs a 3-D tensor"),
    (["--model", "myzoo:pair"], "returns a tuple, not logits"),
    (["--model", "torchvision:resnet18", "--weights", "none", "--mean", "0.5,0.5,0.5"], "both `mean` and `std`"),
    (["--model", "torchvision:resnet18"], "it would study a randomly initialised network"),
    (["--model", "torchvision:resnet18", "--weights", "none", "--mean", "0.5,0.5", "--std", "0.2,0.2"],
     "`mean` has 2 values"),
    (["--model", "myzoo:needs_arg"], "cannot be called without arguments"),
    (["--model", "robustbench:Sehwag2021Proxy_R18", "--model-dir", "{d}/rbbad"], "(missing key "),
])
def test_bad_model_input_is_one_line(zoo, tmp_path, monkeypatch, args, pattern):
    import robustbench.utils  # importable once the fixture ran

    def offline(*a, **k):
        raise ConnectionError("no internet")

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", offline)
    d, _ = zoo
    monkeypatch.syspath_prepend(str(d))
    args = [a.replace("{d}", str(d)) for a in args]
    res = runner.invoke(app, ["activations", *args, "--n", "10", "--attack", "fgsm", "--out", str(tmp_path)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and pattern.replace("`mean`", "--mean").replace("`std`", "--std") in text, text
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) <= 3
    with pytest.raises(ChanscopeError):  # the library says the same in its own words
        chanscope.load_model("hub:resnet18")


@pytest.mark.parametrize("factory, layer", [("scaled", "fc:in"), ("conv_head", "3:in"), ("small", "6:in")])
def test_default_layer_is_the_classifiers_input_for_other_heads(zoo, monkeypatch, factory, layer):
    from chanscope.observe.hooks import default_layer

    d, _ = zoo
    monkeypatch.syspath_prepend(str(d))
    net = chanscope.load_model(f"myzoo:{factory}")
    assert default_layer(net, torch.rand(2, 3, 32, 32)) == layer


def test_a_model_without_a_classifier_output_is_refused_naming_layer(zoo, monkeypatch, tmp_path):
    d, _ = zoo
    monkeypatch.syspath_prepend(str(d))
    res = runner.invoke(app, ["activations", "--model", "myzoo:squeeze_head", "--n", "10", "--attack", "fgsm",
                              "--out", str(tmp_path)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "name the layer with --layer" in text and "Traceback" not in res.output, text
    assert not list(tmp_path.glob("classes*.csv"))


def test_weights_saved_from_data_parallel_load(zoo, tmp_path):
    """A state_dict with DataParallel's `module.` prefix loads (the prefix is stripped and recorded)."""
    import torchvision

    d, _ = zoo
    sd = torch.load(d / "tv.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pt")
    net = chanscope.load_model("torchvision:resnet18", weights=str(tmp_path / "dp.pt"))
    ref = torchvision.models.resnet18(num_classes=10)
    ref.load_state_dict(sd)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ref.eval()(x), atol=1e-5)
    assert net.source["stripped_prefix"] == "module."


def test_a_hook_that_replaces_features_keeps_a_namedtuple_output():
    """A foreign block that returns a namedtuple (features, extra): a tap that replaces the features (a
    relevance shift, an ablation) gives the same namedtuple back, with the rest as it was."""
    from collections import namedtuple

    import torch
    from torch import nn

    from chanscope.observe.hooks import tap

    Out = namedtuple("Out", ["features", "extra"])

    class Block(nn.Module):
        def forward(self, x):
            return Out(x + 1, x.sum())

    block, x = Block(), torch.ones(2, 3)
    handle = tap(block, "block", lambda f: f * 2)
    out = block(x)
    handle.remove()
    assert isinstance(out, Out) and torch.equal(out.features, (x + 1) * 2) and torch.equal(out.extra, x.sum())
