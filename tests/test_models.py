import pytest
import torch

from optbench.errors import UserError
from optbench.models import build_mlp, linear_layers


def test_parameter_count_is_sum_of_n_in_n_out_plus_n_out():
    model = build_mlp([256, 128])
    expected = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_batchnorm_pre_drops_the_linear_bias_and_orders_modules():
    model = build_mlp([32], activation="tanh", batchnorm="pre")
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "Tanh", "Linear"]
    assert linear_layers(model)[0][1].bias is None
    post = [type(m).__name__ for m in build_mlp([32], activation="tanh", batchnorm="post")]
    assert post == ["Flatten", "Linear", "Tanh", "BatchNorm1d", "Linear"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(hidden=[0]), "model.hidden"),
        (dict(hidden=[8], activation="relux"), "model.activation"),
        (dict(hidden=[8], batchnorm="middle"), "model.batchnorm"),
        (dict(hidden=[8], dropout=1.0), "model.dropout"),
    ],
)
def test_bad_model_settings_name_the_key(kwargs, words):
    with pytest.raises(UserError, match=words):
        build_mlp(**kwargs)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_batchnorm_eval_uses_running_statistics(placement):
    torch.manual_seed(0)
    model = build_mlp([8], activation="tanh", batchnorm=placement)
    bn = next(m for m in model if isinstance(m, torch.nn.BatchNorm1d))
    for _ in range(20):  # training mode: batch statistics, and the running averages move
        model(torch.randn(64, 784) * 3 + 1)
    assert not torch.allclose(bn.running_mean, torch.zeros(8))
    x = torch.randn(32, 784)
    model.eval()
    one_by_one = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(model(x), one_by_one)  # no batch statistics: each output depends on its input only
    # by hand with the running averages
    layers = list(model)
    h = layers[1](x)
    if placement == "post":
        h = layers[2](h)
    z = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    if placement == "pre":
        z = layers[3](z)
    torch.testing.assert_close(layers[-1](z), model(x))
    model.train()
    assert not torch.allclose(model(x), one_by_one)  # training mode normalises with the batch's own statistics
