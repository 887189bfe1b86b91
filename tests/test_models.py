"""Model zoo: every family builds for 10 and 100 classes, trains a step, matches the studies' counts."""

from __future__ import annotations

import pytest
import torch

from rayclf.config import ConfigError, UserError, build_config
from rayclf.models import count_params, create_model
from rayclf.train.phases import parameter_groups, set_trainable

FAMILIES = [
    {"name": "mlp", "hidden": [64, 32], "activation": "gelu", "dropout": 0.2, "batch_norm": True},
    {"name": "cnn", "widths": [16, 32, 32], "kernel_size": 4, "norm": "after", "activation": "leaky_relu",
     "dropout": [0.2, 0.5, 0.7], "head": [64], "head_dropout": 0.5, "pool": "avg"},
    {"name": "cnn", "widths": [8, 8], "pool": "none", "activation": "elu", "norm": "before", "global_pool": True},
    {"name": "vgg_baseline", "blocks": 1},
    {"name": "vgg_baseline", "blocks": 3, "norm": "before", "dropout": 0.2, "activation": "tanh"},
    {"name": "resnet_custom", "blocks": 3, "kernel_size": 2, "width": 16},
    {"name": "resnet_custom", "blocks": 1, "kernel_size": 5, "width": 16, "pool": "avg"},
    {"name": "resnet_cifar", "depth": 20, "dropout": 0.1},
    {"name": "resnet18", "cifar_stem": True},
    {"name": "vgg11", "head": [32, 32, 32], "head_dropout": 0.4},
]


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("opts", FAMILIES, ids=lambda o: f"{o['name']}-{len(o)}")
def test_forward_backward(opts, classes):
    model = create_model(build_config({"model": opts}).model, classes)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, classes)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_keras_tuning_study_cnn_has_375946_parameters():
    keras5 = {"name": "cnn", "widths": [64, 128, 128, 128], "kernel_size": 3, "pool": "avg",
              "activation": "leaky_relu", "leaky_slope": 0.1, "dropout": 0.05, "head_dropout": 0.05}
    assert count_params(create_model(build_config({"model": keras5}).model, 10)) == 375_946


def test_resnet20_has_about_027m_parameters():
    n = count_params(create_model(build_config({"model": {"name": "resnet_cifar", "depth": 20}}).model, 10))
    assert 0.26e6 < n < 0.28e6
    n56 = count_params(create_model(build_config({"model": {"name": "resnet_cifar", "depth": 56}}).model, 10))
    assert 0.84e6 < n56 < 0.87e6  # He et al.: 0.85 M


def test_vgg_baselines_match_their_layouts():
    b1 = create_model(build_config({"model": {"name": "vgg_baseline", "blocks": 1}}).model, 10)
    # conv 3→32, conv 32→32, max-pool to 16×16, dense 8192→10
    assert count_params(b1) == (3 * 9 * 32 + 32) + (32 * 9 * 32 + 32) + (32 * 16 * 16 * 10 + 10)


@pytest.mark.parametrize(("raw", "msg"), [
    ({"name": "resnet_cifar", "depth": 21}, "6n\\+2"),
    ({"name": "cnn", "widths": [8, 8], "dropout": [0.1]}, "2 blocks"),
    ({"name": "cnn", "pool": "maxx"}, "Did you mean 'max'"),
    ({"name": "cnn", "activation": "leakyrelu"}, "Did you mean 'leaky_relu'"),
])
def test_model_option_errors(raw, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config({"model": raw})


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform",
                                    "normal", "zeros"])
def test_weight_init_schemes(scheme):
    model = create_model(build_config({"model": {"name": "cnn", "widths": [8], "init": scheme}}).model, 10)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.all(conv.bias == 0)
    if scheme == "zeros":
        assert torch.all(conv.weight == 0)
    else:
        assert conv.weight.std() > 0


def test_transfer_phases_freeze_all_but_head_then_last_stages():
    model = create_model(build_config({"model": {"name": "resnet_cifar", "depth": 20}}).model, 10)
    groups = parameter_groups(model)
    assert groups[-1] == ["head.1.weight", "head.1.bias"]
    set_trainable(model, "head")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("head."):
            assert p.grad is not None
        else:
            assert p.grad is None and not p.requires_grad
    set_trainable(model, "last:1")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("stages.2.") for n in trainable) and not any(n.startswith("stages.1.") for n in trainable)
    set_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())


def test_timm_head_groups_and_resize():
    model = create_model(build_config({"model": {"name": "resnet18", "head": [16], "resize": 64}}).model, 10)
    assert parameter_groups(model)[-1][0].startswith("head.")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_pretrained_offline_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # read at import time, so patch the constant
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = build_config({"model": {"name": "resnet18", "pretrained": True}})
    with pytest.raises(UserError, match="Hugging Face cache.*model.checkpoint"):
        create_model(cfg.model, 10)
    cfg = build_config({"model": {"name": "resnet18", "checkpoint": str(tmp_path / "nope.pth")}})
    with pytest.raises(UserError, match="does not exist"):
        create_model(cfg.model, 10)


def test_pretrained_from_local_checkpoint_file(tmp_path):
    import timm

    source = timm.create_model("resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    cfg = build_config({"model": {"name": "resnet18", "checkpoint": str(tmp_path / "resnet18.pth")}})
    model = create_model(cfg.model, 10)  # classifier is re-initialised for 10 classes, the rest loaded
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_init_touches_only_new_layers_when_weights_are_pretrained(tmp_path):
    import timm

    source = timm.create_model("resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    for head in ([], [16]):
        cfg = build_config({"model": {"name": "resnet18", "checkpoint": str(tmp_path / "resnet18.pth"),
                                      "init": "zeros", "head": head}})
        model = create_model(cfg.model, 10)
        assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)  # pretrained weights kept
        assert torch.equal(model.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
        new = model.head if head else model.backbone.fc
        assert all(not p.any() for p in new.parameters())  # the new head got the configured init
    scratch = create_model(build_config({"model": {"name": "resnet18", "init": "zeros"}}).model, 10)
    assert not scratch.backbone.conv1.weight.any()  # without pretrained weights init applies everywhere


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "vit_tiny_patch16_224"])
def test_replacement_head_uses_timms_own_pooling_at_32px(name):
    """NCHW maps, ConvNeXt's head norm and ViT tokens all reach the dense head as timm pools them."""
    model = create_model(build_config({"model": {"name": name, "head": [16]}}).model, 10, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        pooled = model.backbone(x)  # num_classes=0: timm's full forward ends in its pre-logits features
    assert out.shape == (2, 10) and pooled.shape == (2, model.backbone.num_features)
    assert torch.allclose(out, model.head(pooled), atol=1e-5)
