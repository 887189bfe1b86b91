"""Any timm model by name, optionally ImageNet-pretrained, with an input resize and a replacement head.

Pretrained weights come from timm's normal loading (Hugging Face hub / its cache) or from a local
file (``checkpoint``); offline without either is a clear error that says where to put the file.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import nn

from rayclf.models.hooks import Hooked
from rayclf.models.layers import dense_head
from rayclf.models.options import TimmOptions
from rayclf.models.registry import TIMM_FALLBACK, register_model
from rayclf.schema import UserError


class TimmClassifier(Hooked, nn.Module):
    """A timm backbone with an optional resize in front and an optional dense head behind."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, resize: int | None,
                 new_stem: nn.Module | None = None):
        super().__init__()
        self.backbone, self.head, self.resize = backbone, head, resize
        self._new_stem = [new_stem] if new_stem is not None else []  # a list: not registered twice

    def new_modules(self) -> list[nn.Module]:
        """Layers that pretrained weights do not cover: the classifier (timm's, or our head) and a CIFAR stem."""
        head = self.head if self.head is not None else self.backbone.get_classifier()
        return [head, *self._new_stem]

    def forward(self, x):
        if self.resize and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if self.head is None:
            return self.backbone(x)
        feats = self.backbone.forward_features(x)
        # timm's own pooling (avg over NCHW or NHWC maps, class token or mean over ViT tokens, head norm)
        return self.head(self.backbone.forward_head(feats, pre_logits=True))

    def param_groups_ordered(self) -> list[list[str]]:
        """timm's own stem/stage groups, then the head (ours, or timm's classifier as its last group)."""
        from timm.models import group_parameters

        grouped = group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
        groups = [[f"backbone.{n}" for n in names] for _, names in sorted(grouped.items())]
        if self.head is not None:
            groups.append([f"head.{n}" for n, _ in self.head.named_parameters()])
        return [g for g in groups if g]


def _create(name: str, opts: TimmOptions, num_classes: int, in_chans: int, image_size: int = 224) -> nn.Module:
    import timm

    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": opts.drop_rate}
    if timm.get_pretrained_cfg(name) and timm.get_pretrained_cfg(name).fixed_input_size:
        kwargs["img_size"] = opts.resize or image_size  # ViT/Swin-style: position embeddings sized for the input
    if opts.checkpoint:
        path = Path(opts.checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"model.checkpoint {path} does not exist; put the pretrained weights file there.")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(name, pretrained=opts.pretrained or bool(opts.checkpoint), **kwargs)
    except UserError:
        raise
    except Exception as exc:
        if not (opts.pretrained or opts.checkpoint):
            raise
        raise UserError(
            f"could not load pretrained weights for timm model '{name}' ({type(exc).__name__}: {str(exc)[:200]}). "
            "Offline? Download them once on a connected machine (python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\") so they land in the Hugging Face cache "
            "(~/.cache/huggingface, or $HF_HOME), copy that cache here, or set model.checkpoint to a local "
            ".pth/.safetensors file.") from None


@register_model(TIMM_FALLBACK, TimmOptions)
def build_timm(opts: TimmOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    head = None
    if opts.head:
        backbone = _create(opts.name, opts, 0, in_chans, image_size)  # features only; our head replaces the classifier
        if hasattr(backbone, "pre_logits"):  # e.g. VGG's fc6/fc7 block: unused on the pooled-features path
            backbone.pre_logits = nn.Identity()
        head = dense_head(backbone.num_features, opts.head, num_classes, opts.head_dropout, opts.head_activation,
                          at=opts.head_dropout_at)
    else:
        backbone = _create(opts.name, opts, num_classes, in_chans, image_size)
    if opts.cifar_stem and hasattr(backbone, "conv1") and hasattr(backbone, "maxpool"):
        out = backbone.conv1.out_channels
        backbone.conv1 = nn.Conv2d(in_chans, out, 3, 1, 1, bias=False)
        backbone.maxpool = nn.Identity()
        return TimmClassifier(backbone, head, opts.resize, new_stem=backbone.conv1)
    return TimmClassifier(backbone, head, opts.resize)


def prepare_weights(opts: TimmOptions) -> None:
    """Fetch pretrained weights into the local cache once (the sweep driver calls this per node)."""
    if opts.pretrained or opts.checkpoint:
        _create(opts.name, opts, 10, 3)
