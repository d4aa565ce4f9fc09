"""The default classifier: a timm 2D encoder per slice, a BiGRU along each vertebra, eight fracture logits.

Registered as ``effnet_gru``; trained through src/training with the ``vertebra`` task
(src/tasks/vertebra.py), which feeds one item per study: for each of C1..C7, ``n_slices`` slices
sampled evenly over the vertebra's range from the localisation table, cropped to its box, with
``neighbours`` slices either side and every HU window as channels (2.5D). Shapes::

    batch["images"]  float (B, 7, N, C, H, W)    B studies, 7 vertebrae, N slices, C = windows x (2k+1)
    batch["labels"]  float (B, 8)                 TARGETS order, optional
    output["logits"] float (B, 8)                 patient_overall, C1..C7
    output["attention"] float (B, 7, N)           each vertebra's attention weights over its slices (sum 1)

Each vertebra's slices are embedded by the encoder, a bidirectional GRU reads them in order
(head to feet), attention pooling weighs the slices (a fracture shows on a few of them), and a linear
head plus a per-vertebra bias gives its logit. patient_overall comes from the seven through
``effnet_gru.patient_head``: ``noisy_or`` (the patient is fractured unless every vertebra is intact,
assuming independence), ``max``, or ``learned`` (a small head on the pooled vertebra embeddings).
The loss is the competition metric itself (src.models.losses), so training sees all eight targets.

Stage-2 switches (issue 18; configs/effnet_gru.yaml turns on the auxiliary loss): ``mask_channel`` adds
one input channel (the target vertebra's mask); ``aux_loss_weight`` > 0 adds a per-slice head on the
GRU's slice features, trained on the items' per-slice targets (which vertebrae a slice shows, whether it
shows the fracture) with that weight beside the competition loss; ``mixup_prob`` mixes training items in
pairs (src/models/mixup.py).

Imports only torch and timm: the GPU box and inference need nothing else.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .losses import competition_loss
from .mixup import draw_mix, mix, mixed_loss
from .registry import register_model

N_VERTEBRAE = 7
PATIENT_HEADS = ("noisy_or", "max", "learned")


class PretrainedWeightsError(RuntimeError):
    """``pretrained=true`` but no weights can be found offline; the message says where to put them."""


def input_channels(cfg, section: str = "effnet_gru") -> int:
    """Channels per slice image: every HU window for the slice itself and its neighbours either side,
    plus the target vertebra's mask with ``mask_channel``."""
    settings = cfg[section]
    return len(cfg["windows"]) * (2 * int(settings["neighbours"]) + 1) + int(bool(settings.get("mask_channel", False)))


def create_encoder(name: str, in_chans: int, pretrained: bool = False, pretrained_path: str | None = None,
                   drop_path_rate: float = 0.0) -> nn.Module:
    """A timm backbone without its classifier (``num_classes=0``: forward gives pooled features).

    Pretrained weights come from ``pretrained_path`` (a timm/torch state dict) or the local Hugging
    Face / torch hub cache. The hub is forced offline so that a box with no network fails at once
    with a message instead of hanging on a download. timm adapts the first convolution to
    ``in_chans`` (2.5D stacks have more than three channels) by repeating the RGB filters.
    """
    import timm

    kwargs = dict(num_classes=0, in_chans=in_chans, drop_path_rate=drop_path_rate)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained_path:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained_path={path} does not exist; point it at a weights file "
                                         f"for {name} or set pretrained=false")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True  # the env var is read once at import; this covers an earlier import
    except ImportError:
        pass
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # timm raises several types (hub, url, file) for one cause: weights not here
        raise PretrainedWeightsError(
            f"pretrained=true but no local weights for '{name}' ({type(err).__name__}: {err}). Downloads are off: "
            f"copy the weights file here and set pretrained_path=<file>, fill the Hugging Face cache "
            f"(HF_HOME) on a machine with network, or set pretrained=false") from err


def _config_error(message: str) -> Exception:
    """src.config's ConfigError (entry points print it as one line, no traceback) where src.config can be
    imported; the GPU box and inference may lack omegaconf, and then a plain ValueError says the same."""
    try:
        from ..config import ConfigError
    except ImportError:
        return ValueError(message)
    return ConfigError(message)


def noisy_or_logit(vertebra_logits: torch.Tensor) -> torch.Tensor:
    """logit of 1 - prod(1 - p_v) over the last dimension, computed without leaving log space.

    With S = sum_v softplus(l_v) = -log prod(1 - p_v), P = 1 - exp(-S) and logit(P) = S + log(1 - exp(-S)),
    which stays finite and accurate both for tiny S (all vertebrae confidently intact) and large S.
    """
    total = nn.functional.softplus(vertebra_logits.float()).sum(dim=-1).clamp_min(1e-12)
    return total + torch.log(-torch.expm1(-total))


class AttentionPool(nn.Module):
    """Weighted mean over the slice axis, weights from a small scoring MLP (additive attention)."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, sequence: torch.Tensor, with_weights: bool = False):
        """(B, N, D) -> (B, D); with ``with_weights`` also the (B, N) weights, which sum to 1 over N."""
        weights = torch.softmax(self.score(sequence).squeeze(-1), dim=1)
        pooled = (weights.unsqueeze(-1) * sequence).sum(dim=1)
        return (pooled, weights) if with_weights else pooled


@register_model("effnet_gru")
class EffNetGRU(nn.Module):
    task = "vertebra"
    settings = "effnet_gru"
    family = "effnet_gru"
    needs_localisation = True
    smoke_overrides = ("effnet_gru.encoder=test_efficientnet", "effnet_gru.n_slices=3", "effnet_gru.neighbours=0",
                       "effnet_gru.crop_size=32", "effnet_gru.gru_hidden=8", "batch_size=2",
                       "pretrained=false", "effnet_gru.grad_checkpointing=false")

    def __init__(self, cfg):
        super().__init__()
        c = cfg[self.settings]
        if c["patient_head"] not in PATIENT_HEADS:
            raise _config_error(f"effnet_gru.patient_head={c['patient_head']!r}; expected one of {', '.join(PATIENT_HEADS)}")
        self.patient_head = c["patient_head"]
        if c.get("train_unit", "study") not in ("study", "vertebra"):
            raise _config_error(f"effnet_gru.train_unit={c['train_unit']!r}; expected study or vertebra")
        if c.get("train_unit") == "vertebra" and self.patient_head == "learned":
            raise _config_error("effnet_gru.patient_head=learned needs train_unit=study: single-vertebra items "
                                "carry no patient_overall label to train that head on")
        try:
            self.encoder = create_encoder(c["encoder"], input_channels(cfg, self.settings), bool(cfg["pretrained"]),
                                          cfg["pretrained_path"], float(c.get("drop_path_rate", 0.0)))
        except PretrainedWeightsError as err:
            raise _config_error(str(err)) from err
        if c.get("grad_checkpointing", False):
            self.encoder.set_grad_checkpointing(True)  # trades compute for memory at 384-512 px on a GPU
        features = self.encoder.num_features
        hidden = int(c["gru_hidden"])
        self.gru = nn.GRU(features, hidden, batch_first=True, bidirectional=True)
        self.pool = AttentionPool(2 * hidden)
        self.dropout = nn.Dropout(float(c["drop_rate"]))
        self.vertebra_head = nn.Linear(2 * hidden, 1)
        # Fracture rates differ by level (C2 and C7 far above C3): a bias per vertebra carries that prior.
        self.vertebra_bias = nn.Parameter(torch.zeros(N_VERTEBRAE))
        if self.patient_head == "learned":
            self.patient_mlp = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        self.mixup_prob, self.mixup_alpha = float(c.get("mixup_prob", 0.0)), float(c.get("mixup_alpha", 0.4))
        self.aux_loss_weight = float(c.get("aux_loss_weight", 0.0))
        if self.aux_loss_weight > 0:  # made last and only when on: a model without it has the same weights
            self.slice_head = nn.Linear(2 * hidden, N_VERTEBRAE + 1)  # which vertebrae a slice shows, fracture

    def init_label_prior(self, rates) -> None:
        """Start at the training label rates (TARGETS order): the first epochs then refine the prior
        instead of spending their steps finding it, and from-scratch runs are steadier."""
        rates = torch.as_tensor(rates, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.vertebra_bias.copy_(torch.logit(rates[1:]))
            if self.patient_head == "learned":
                self.patient_mlp[-1].bias.fill_(float(torch.logit(rates[0])))

    def embed_vertebrae(self, images: torch.Tensor):
        """(B, V, N, C, H, W) slice stacks -> (pooled vertebra embeddings (B, V, 2 * gru_hidden), the
        attention weights that pooled them (B, V, N; src/tasks/explanation.py), the per-slice GRU features
        (B, V, N, 2 * gru_hidden) the auxiliary head reads)."""
        b, v, n = images.shape[:3]
        slices = self.encoder(images.flatten(0, 2))                   # (B*V*N, F)
        sequence, _ = self.gru(slices.view(b * v, n, -1).float())     # GRU in fp32: bf16 recurrences drift
        pooled, weights = self.pool(sequence, with_weights=True)
        return pooled.view(b, v, -1), weights.view(b, v, n), sequence.view(b, v, n, -1)

    def slice_loss(self, slice_features: torch.Tensor, batch: dict) -> torch.Tensor:
        """The auxiliary per-slice loss: BCE of which vertebrae each slice shows, plus BCE of the fracture
        on the slices that have a target (-1 marks none). Features (..., N, D), targets (..., N, 7), (..., N)."""
        logits = self.slice_head(slice_features).float()
        presence = nn.functional.binary_cross_entropy_with_logits(logits[..., :N_VERTEBRAE],
                                                                  batch["slice_vertebrae"].float())
        target = batch["slice_fracture"].float()
        known = (target >= 0).float()
        fracture = nn.functional.binary_cross_entropy_with_logits(logits[..., N_VERTEBRAE], target.clamp_min(0),
                                                                  reduction="none")
        return presence + (fracture * known).sum() / known.sum().clamp_min(1.0)

    def _auxiliary(self) -> bool:
        return self.aux_loss_weight > 0 and self.training

    def _mix(self, batch: dict):
        """(mixed images, lam, perm) in training with ``mixup_prob`` > 0, else (images, None, None)."""
        drawn = draw_mix(batch["images"].shape[0], self.mixup_prob, self.mixup_alpha) if self.training else None
        if drawn is None:
            return batch["images"], None, None
        lam, perm = drawn
        return mix(batch["images"], lam, perm), lam, perm

    def forward_vertebrae(self, batch: dict) -> dict:
        """Single-vertebra items (``train_unit: vertebra``): images (B, N, C, H, W), vertebra (B,) in 0..6."""
        images, lam, perm = self._mix(batch)
        aux = self._auxiliary() and "slice_fracture" in batch
        pooled, _, slice_features = self.embed_vertebrae(images.unsqueeze(1))
        pooled = pooled.squeeze(1)                                                           # (B, D)
        bias = self.vertebra_bias[batch["vertebra"]]
        if lam is not None:  # a mixed item's prior is the same mix of its two vertebrae's
            bias = mix(bias, lam, perm)
        logits = (self.vertebra_head(self.dropout(pooled)).squeeze(-1) + bias).float()
        out = {"logits": logits.unsqueeze(1)}
        if "vertebra_label" in batch:
            def vertebra_loss(target: dict) -> torch.Tensor:
                label = target["vertebra_label"].float()
                # the competition's vertebra weights (2 fractured, 1 intact) times the sampling weight
                weight = (1.0 + label) * target["vertebra_weight"].float()
                bce = nn.functional.binary_cross_entropy_with_logits(logits, label, reduction="none")
                return (weight * bce).sum() / weight.sum()

            out["loss"] = mixed_loss(vertebra_loss, batch, lam, perm)
            if aux:
                out["loss"] = out["loss"] + self.aux_loss_weight * mixed_loss(
                    lambda target: self.slice_loss(slice_features.squeeze(1), target), batch, lam, perm)
        return out

    def forward(self, batch: dict) -> dict:
        if "vertebra" in batch:
            return self.forward_vertebrae(batch)
        images = batch["images"]
        if images.ndim != 6 or images.shape[1] != N_VERTEBRAE:
            raise ValueError(f"effnet_gru expects images (B, 7, N, C, H, W), got {tuple(images.shape)}")
        images, lam, perm = self._mix(batch)
        aux = self._auxiliary() and "slice_fracture" in batch
        pooled, attention, slice_features = self.embed_vertebrae(images)  # (B, 7, D), (B, 7, N), (B, 7, N, D)
        vertebra_logits = self.vertebra_head(self.dropout(pooled)).squeeze(-1) + self.vertebra_bias
        if self.patient_head == "noisy_or":
            patient = noisy_or_logit(vertebra_logits)
        elif self.patient_head == "max":
            patient = vertebra_logits.max(dim=1).values
        else:
            summary = torch.cat([pooled.max(dim=1).values, pooled.mean(dim=1)], dim=1)
            patient = self.patient_mlp(self.dropout(summary)).squeeze(-1)
        logits = torch.cat([patient.unsqueeze(1).float(), vertebra_logits.float()], dim=1)
        out = {"logits": logits, "vertebra_logits": vertebra_logits, "attention": attention.float()}
        if "labels" in batch:
            out["loss"] = mixed_loss(lambda target: competition_loss(logits, target["labels"]), batch, lam, perm)
            if aux:
                out["loss"] = out["loss"] + self.aux_loss_weight * mixed_loss(
                    lambda target: self.slice_loss(slice_features, target), batch, lam, perm)
        return out
