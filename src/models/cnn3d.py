"""The 3D CNN baseline: a compact 3D ResNet on the whole study volume, eight fracture logits out.

Registered as ``cnn3d``; trained and inferred with the "volume" task (src/tasks/volume.py), which feeds
it the study resampled to ``cfg.cnn3d.shape`` with one channel per HU window. It sees no
vertebra localisation, so it is the honest reference every localise-then-classify model must beat.
Written here rather than taken from MONAI so that it needs nothing but torch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .losses import competition_loss
from .registry import register_model


def _conv_bn(in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm3d(out_ch),
    )


class ResidualBlock3d(nn.Module):
    """Two 3x3x3 convolutions with a shortcut (a 1x1x1 projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(in_ch, out_ch, stride)
        self.conv2 = _conv_bn(out_ch, out_ch)
        self.shortcut = nn.Identity() if stride == 1 and in_ch == out_ch else _conv_bn(in_ch, out_ch, stride, kernel=1)
        self.act = nn.ReLU(inplace=True)
        nn.init.zeros_(self.conv2[1].weight)  # each block starts as the identity: stabler from scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


@register_model("cnn3d")
class CNN3D(nn.Module):
    """Stem (stride 2 + max-pool), one stage per width (stride 2 after the first), global pooling, linear head."""

    task = "volume"
    settings = "cnn3d"
    family = "cnn3d"
    needs_localisation = False
    smoke_overrides = ("cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "cnn3d.blocks=1")

    def __init__(self, cfg):
        super().__init__()
        c = cfg[self.settings]
        widths = list(c["widths"])
        in_ch = len(cfg["windows"])
        self.stem = nn.Sequential(
            nn.Conv3d(in_ch, widths[0], kernel_size=5, stride=2, padding=2, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks = [ResidualBlock3d(prev, width, stride=1 if i == 0 else 2)]
            blocks += [ResidualBlock3d(width, width) for _ in range(c["blocks"] - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(c["dropout"])
        self.head = nn.Linear(prev, 8)

    def init_label_prior(self, rates: np.ndarray) -> None:
        """Start the head at the training labels' rates: the first epoch is then not spent learning them."""
        rates = np.clip(np.asarray(rates, dtype=float), 1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.head.bias.copy_(torch.as_tensor(np.log(rates / (1 - rates)), dtype=self.head.bias.dtype))

    def forward(self, batch: dict) -> dict:
        features = self.stages(self.stem(batch["volume"]))
        logits = self.head(self.dropout(self.pool(features).flatten(1)))
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = competition_loss(logits, batch["labels"])
        return out
