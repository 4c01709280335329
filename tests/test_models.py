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
