"""FSR (Kim et al., CVPR 2023): the official ResNet18_FSR layout loads with the logits of a reference forward
written here from the official code's description; training, the adaptive attack and the layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from chanscope.cli.app import app
from typer.testing import CliRunner

import chanscope
from chanscope.attacks.suite import adaptive_losses
from chanscope.models import create_model
from chanscope.models.select import gumbel_sigmoid_mask
from chanscope.observe.hooks import ActivationRecorder


def _bn(prefix: str, c: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(c, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=g),
            f"{prefix}.running_var": 0.5 + torch.rand(c, generator=g), f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _official_state_dict(width: int = 16) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of the official ResNet18_FSR (kuangliu ResNet-18 + FSR
    after layer4), at channel width `width` (64 in the official model)."""
    g = torch.Generator().manual_seed(0)

    def conv(cout: int, cin: int, k: int) -> torch.Tensor:
        return torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5

    sd = {"conv1.weight": conv(width, 3, 3), **_bn("bn1", width, g)}
    cin = width
    for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
        for b in range(2):
            p = f"layer{i + 1}.{b}"
            sd.update({f"{p}.conv1.weight": conv(cout, cin, 3), **_bn(f"{p}.bn1", cout, g),
                       f"{p}.conv2.weight": conv(cout, cout, 3), **_bn(f"{p}.bn2", cout, g)})
            if b == 0 and i > 0:
                sd.update({f"{p}.shortcut.0.weight": conv(cout, cin, 1), **_bn(f"{p}.shortcut.1", cout, g)})
            cin = cout
    for net in ("separation.sep_net", "recalibration.rec_net"):
        sd.update({f"{net}.0.weight": conv(64, cin, 3), **_bn(f"{net}.1", 64, g), f"{net}.3.weight": conv(64, 64, 3),
                   **_bn(f"{net}.4", 64, g), f"{net}.6.weight": conv(cin, 64, 3)})
    sd.update({"aux.0.weight": 0.1 * torch.randn(10, cin, generator=g), "aux.0.bias": torch.zeros(10),
               "linear.weight": 0.1 * torch.randn(10, cin, generator=g), "linear.bias": torch.zeros(10)})
    return sd


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """The official ResNet18_FSR forward in eval mode (is_eval=True), from its key names."""
    def bn(p, h):
        return F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, 1e-5)

    def conv(p, h, stride=1, pad=1):
        return F.conv2d(h, sd[f"{p}.weight"], stride=stride, padding=pad)

    h = F.relu(bn("bn1", conv("conv1", x)))
    for i in range(4):
        for b in range(2):
            p = f"layer{i + 1}.{b}"
            stride = 2 if (b == 0 and i > 0) else 1
            out = F.relu(bn(f"{p}.bn1", conv(f"{p}.conv1", h, stride)))
            out = bn(f"{p}.bn2", conv(f"{p}.conv2", out))
            sc = bn(f"{p}.shortcut.1", conv(f"{p}.shortcut.0", h, stride, 0)) if f"{p}.shortcut.0.weight" in sd else h
            h = F.relu(out + sc)

    def net(p, t):
        t = F.relu(bn(f"{p}.1", conv(f"{p}.0", t)))
        t = F.relu(bn(f"{p}.4", conv(f"{p}.3", t)))
        return conv(f"{p}.6", t)

    z = net("separation.sep_net", h)
    p = torch.sigmoid(z)
    u = torch.full_like(z, 0.5)  # is_eval: U = 0.5 for both Gumbel samples
    gx = -torch.log(-torch.log(u + 1e-8) + 1e-8)
    xs = (torch.log(p + 1e-8) + gx) / (tau + 1e-8)
    rs = (torch.log(1 - p + 1e-8) + gx) / (tau + 1e-8)
    mask = torch.softmax(torch.stack([xs, rs]), dim=0)[0]
    r_feat, nr_feat = h * mask, h * (1 - mask)
    rec_feat = nr_feat + net("recalibration.rec_net", nr_feat) * (1 - mask)
    out = (r_feat + rec_feat).mean(dim=(2, 3))
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def test_an_official_fsr_state_dict_gives_the_reference_logits(tmp_path):
    sd = _official_state_dict()
    torch.save(sd, tmp_path / "fsr.pth")
    model = chanscope.load_model(tmp_path / "fsr.pth", "cpu")
    assert model.model_kwargs["feature_select"] == "fsr" and model.model_kwargs["width"] == 0.25
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(sd, x), rtol=1e-4, atol=1e-5)


def test_mask_is_sigmoid_over_tau_in_eval_and_random_in_training():
    z = torch.randn(3, 8, 2, 2)
    torch.testing.assert_close(gumbel_sigmoid_mask(z, 0.1, stochastic=False), torch.sigmoid(z / 0.1),
                               rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    a, b = gumbel_sigmoid_mask(z, 0.1, True), gumbel_sigmoid_mask(z, 0.1, True)
    assert not torch.equal(a, b) and ((a >= 0) & (a <= 1)).all()
    model = create_model("resnet10", width=0.125, feature_select="fsr").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # deterministic at evaluation, as the official code


def test_adaptive_attack_covers_the_robust_and_recalibrated_heads_and_layers_are_hookable():
    model = create_model("resnet10", width=0.125, feature_select="fsr").eval()
    assert set(adaptive_losses(model)) == {"final", "final_cw", "joint", "probe0", "probe0_cw", "probe1",
                                           "probe1_cw"}
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    logits, aux = model(x, return_aux=True)
    assert len(aux) == 2 and all(a.shape == logits.shape for a in aux)
    parts = ["layer4.0.select.robust", "layer4.0.select.nonrobust", "layer4.0.block", "layer4"]
    with ActivationRecorder(model, parts, 10) as rec:
        mags = rec.observe(x, y, "natural")
    assert all(m.shape == (6, 64) for m in mags.values())
    # the mask splits the (rectified) block output: robust + non-robust magnitudes are the block's
    torch.testing.assert_close(mags["layer4.0.select.robust"] + mags["layer4.0.select.nonrobust"],
                               mags["layer4.0.block"], rtol=1e-5, atol=1e-6)


def test_train_fsr_smoke_and_resume(tmp_path):
    out = tmp_path / "fsr"
    args = ["train", "--method", "fsr", "--preset", "smoke", "--arch", "resnet10", "--width", "0.0625", "--subset",
            "100", "--val-n", "20", "--eval-n", "20", "--batch-size", "50", "--epochs", "1", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    import json

    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["method"] == "fsr" and cfg["tau"] == 0.1 and cfg["lam_sep"] == 1.0
    assert chanscope.load_model(out / "best.pt", "cpu").model_kwargs["tau"] == 0.1
