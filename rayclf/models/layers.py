"""Small building blocks shared by the model families: activations, norms, pooling, weight init."""

from __future__ import annotations

from torch import nn

from rayclf.models.options import (  # noqa: F401  (the families' option types, kept here by their old names)
    Activation,
    HeadDropout,
    NormPlace,
    Padding,
    Pool,
    check_dropout,
)


def make_act(name: str, slope: float = 0.01) -> nn.Module:
    """Activation by name; ``slope`` is LeakyReLU's α."""
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    return {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh,
            "sigmoid": nn.Sigmoid, "silu": nn.SiLU}[name]()


def make_pool(kind: str, size: int = 2) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(size)
    if kind == "avg":
        return nn.AvgPool2d(size)
    return nn.Identity()


def conv_act(cin: int, cout: int, kernel: int, act: str, slope: float, norm: str, stride: int = 1,
             padding: str = "same") -> list[nn.Module]:
    """conv → [BN] → act → [BN]; 'same' padding (even kernels pad like Keras: extra on the right) or 'valid'
    (none, like PyTorch's default ``Conv2d(padding=0)``)."""
    if padding == "valid":
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride)]
    elif kernel % 2:
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)]
    else:
        pad = kernel - 1
        same = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        layers = [same, nn.Conv2d(cin, cout, kernel, stride)]
    if norm == "before":
        layers.append(nn.BatchNorm2d(cout))
    layers.append(make_act(act, slope))
    if norm == "after":
        layers.append(nn.BatchNorm2d(cout))
    return layers


def dense_head(cin: int, hidden: list[int], num_classes: int, dropout: float, act: str = "relu",
               slope: float = 0.01, at: str = "every") -> nn.Sequential:
    """The classifier heads the studies use. ``at: every``: [dropout → linear → act]* → dropout → linear
    (Flatten → Dropout → Dense, seed 000); ``at: output``: [linear → act]* → dropout → linear, one dropout
    before the output layer only (seed 001's VGG19 head, seed 004's FC dropout)."""
    layers: list[nn.Module] = []
    for width in hidden:
        if at == "every":
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(cin, width), make_act(act, slope)]
        cin = width
    layers += [nn.Dropout(dropout), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise conv/linear kernels (biases to zero) with a named scheme; norms keep (1, 0)."""
    inits = {
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        "xavier_normal": nn.init.xavier_normal_,
        "xavier_uniform": nn.init.xavier_uniform_,
        "normal": lambda w: nn.init.normal_(w, 0.0, 0.05),
        "zeros": nn.init.zeros_,
    }
    fn = inits[scheme]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fn(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
