"""SimVP model: published parameter counts, shapes, padding, roll-out, bad input."""

from __future__ import annotations

import pytest
import torch

from laugen_napari.models.simvp import CPU_DEFAULT, MMNIST, SimVP, SimVPConfig, count_parameters

torch.set_num_threads(1)


@pytest.mark.parametrize("translator,published", [("gsta", 46.8e6), ("incepu", 58.0e6)])
def test_parameter_count_matches_published_models(translator, published):
    with torch.device("meta"):
        model = SimVP(SimVPConfig(frames=10, channels=1, translator=translator, **MMNIST))
    n = count_parameters(model)
    assert abs(n - published) / published < 0.01, n


@pytest.mark.parametrize("translator", ["gsta", "incepu"])
@pytest.mark.parametrize("hw", [(32, 32), (61, 50), (7, 9)])
def test_shapes_with_padding_and_cropping(translator, hw):
    torch.manual_seed(0)
    model = SimVP(SimVPConfig(frames=3, channels=2, translator=translator, hid_S=8, hid_T=16, N_S=4, N_T=2)).eval()
    x = torch.randn(2, 3, 2, *hw)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert model.stride == 4


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = SimVP(SimVPConfig(frames=4, **CPU_DEFAULT))
    model(torch.randn(2, 4, 1, 16, 16)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_predict_rolls_out_and_truncates():
    torch.manual_seed(0)
    model = SimVP(SimVPConfig(frames=4, **CPU_DEFAULT)).eval()
    x = torch.randn(1, 4, 1, 16, 16)
    with torch.no_grad():
        one = model(x)
        assert torch.allclose(model.predict(x, 2), one[:, :2])
        six = model.predict(x, 6)
        assert six.shape[1] == 6
        assert torch.allclose(six[:, :4], one) and torch.allclose(six[:, 4:], model(one)[:, :2])


def test_bad_input_and_config():
    model = SimVP(SimVPConfig(frames=4, **CPU_DEFAULT))
    with pytest.raises(ValueError, match=r"expected input \(B, 4, 1, H, W\)"):
        model(torch.randn(1, 5, 1, 16, 16))
    with pytest.raises(ValueError, match="translator"):
        SimVPConfig(translator="convlstm")
    with pytest.raises(ValueError, match="N_T"):
        SimVPConfig(N_T=1)
