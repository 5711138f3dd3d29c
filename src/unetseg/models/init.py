"""Weight initialisation schemes for convolutions; norm layers start as identity and biases at zero."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from unetseg.models.layers import LEAKY_SLOPE, check_choice

INITS = ("kaiming", "xavier", "normal", "orthogonal")
NORMAL_STD = 0.02
LINEAR_INPUT = "_unetseg_linear_input"


def mark_linear_input(*modules: nn.Module) -> None:
    """Mark the convolutions inside ``modules`` as fed by non-rectified input (the raw image, a residual
    sum, a projection), so Kaiming uses gain 1 instead of ReLU's sqrt(2) for them (He et al. 2015, eq. 10
    and the note on the first layer). Without this, residual and recurrent-residual U-Nets start with
    logits around 100 because every unnormalised projection doubles the variance."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, _ConvNd):
                setattr(m, LINEAR_INPUT, True)


def init_weights(module: nn.Module, scheme: str = "kaiming", activation: str = "relu") -> nn.Module:
    """Initialise every (transposed) convolution of ``module`` in place and return ``module``.

    Args:
        module: the network.
        scheme: ``kaiming`` (He et al. 2015, normal, fan-in; the 2015 U-Net paper's ``sqrt(2/N)``
            Gaussian), ``xavier`` (Glorot & Bengio 2010, uniform), ``normal`` (N(0, 0.02)) or
            ``orthogonal`` (Saxe et al. 2014, on the weight flattened to out x fan-in).
        activation: the network's activation, which sets the Kaiming gain (GELU uses ReLU's); convolutions
            marked by :func:`mark_linear_input` get gain 1.
    """
    scheme = check_choice("init", scheme, INITS)
    leaky = activation == "leaky_relu"
    for m in module.modules():
        if any(p.is_meta for p in m.parameters(recurse=False)):
            continue  # shapes only (e.g. counting parameters): there is nothing to fill, and it is slow
        if isinstance(m, _ConvNd):
            if scheme == "kaiming":
                nonlinearity = "leaky_relu" if leaky else "relu"
                if getattr(m, LINEAR_INPUT, False):
                    nonlinearity = "linear"
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE if leaky else 0, nonlinearity=nonlinearity)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "normal":
                nn.init.normal_(m.weight, 0.0, NORMAL_STD)
            else:
                nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_NormBase, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module
