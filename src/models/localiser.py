"""The vertebra localiser: a 3D U-Net that labels every voxel of the downsampled study as background or
one of C1..C7 (thoracic vertebrae count as background).

Registered as ``localiser``; trained through src/training with the "localise" task
(src/localisation/task.py), which feeds it the study resampled to ``cfg.localiser.shape``, one channel
per HU window, and the mask on the same grid. Used for prediction by src/localisation/predict.py.
The network is MONAI's residual UNet; the loss is Dice + cross-entropy, Dice for the small vertebrae
against a background that is >95% of the voxels, cross-entropy for stable early gradients.
"""
from __future__ import annotations

from torch import nn

from ..localisation import task as _task  # noqa: F401  registers the "localise" task with src.tasks
from ..localisation.resample import N_CLASSES
from .registry import register_model


@register_model("localiser")
class Localiser(nn.Module):
    task = "localise"
    settings = "localiser"
    family = "localiser"
    needs_localisation = False
    smoke_overrides = ("localiser.shape=[16,16,16]", "localiser.channels=[4,8]", "localiser.res_units=0")

    def __init__(self, cfg):
        super().__init__()
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet

        c = cfg[self.settings]
        channels = tuple(int(ch) for ch in c["channels"])
        if len(channels) < 2:
            raise ValueError(f"localiser.channels needs at least two widths, got {list(channels)}")
        self.net = UNet(spatial_dims=3, in_channels=len(cfg["windows"]), out_channels=N_CLASSES,
                        channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=int(c["res_units"]),
                        norm=c["norm"], dropout=float(c["dropout"]))
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def forward(self, batch: dict) -> dict:
        logits = self.net(batch["volume"])
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = self.loss_fn(logits, batch["labels"].long().unsqueeze(1))
        return out
