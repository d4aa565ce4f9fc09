"""Training augmentation for slice stacks: one random transform, drawn once, applied to every slice of a sample.

Called by the per-vertebra dataset (src/tasks/vertebra.py) on each vertebra's stack of cropped slices.
The slices of one vertebra are read by a GRU as a sequence, so they must stay aligned with each other:
rotating slice 3 but not slice 4 would teach the model that bone jumps between neighbouring slices.
The stack is therefore handed to albumentations as ONE image whose channels are all the slices and
windows, so every geometric and intensity change is drawn once and applied to all of them.

The random draw follows torch's generator (a seed is taken from it per sample), so DataLoader workers
differ from each other and a resumed run replays the same augmentations.
"""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch


def build_slice_stack_transform(strength: float = 1.0) -> A.Compose:
    """Mild geometry (shift, scale, rotate, left-right mirror) and intensity changes for CT crops.

    ``strength`` scales every range (0 turns augmentation off while keeping the code path). No
    up-down flip: head-to-feet orientation is the same in every study and the model may use it.
    Mirroring left-right is safe: the cervical spine is near symmetric and fractures occur on both sides.
    """
    s = float(strength)
    return A.Compose([
        A.HorizontalFlip(p=0.5 if s > 0 else 0.0),
        A.Affine(scale=(1 - 0.15 * s, 1 + 0.15 * s), translate_percent=(-0.08 * s, 0.08 * s),
                 rotate=(-15 * s, 15 * s), fill=0, p=0.8 if s > 0 else 0.0),
        A.RandomBrightnessContrast(brightness_limit=0.1 * s, contrast_limit=0.15 * s, p=0.5 if s > 0 else 0.0),
        A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(0.1, 0.2), hole_width_range=(0.1, 0.2),
                        fill=0, p=0.2 if s > 0 else 0.0),
    ])


def augment_stack(stack: np.ndarray, transform: A.Compose, mask: np.ndarray | None = None):
    """``stack`` float32 (K, H, W) in [0, 1] (K = slices x channels) -> the same shape, transformed alike.

    Values are clipped back to [0, 1] afterwards (brightness and contrast may push them out). With
    ``mask`` (M, H, W), e.g. the target vertebra's mask channel, returns (stack, mask): the mask takes the
    same geometry and none of the intensity changes or dropout.
    """
    if stack.ndim != 3:
        raise ValueError(f"augment_stack expects (K, H, W), got shape {stack.shape}")
    transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
    image = np.ascontiguousarray(stack.transpose(1, 2, 0))
    if mask is None:
        out = transform(image=image)["image"]
    else:
        result = transform(image=image, mask=np.ascontiguousarray(mask.transpose(1, 2, 0)))
        out, moved = result["image"], result["mask"]
        if moved.ndim == 2:
            moved = moved[:, :, None]
    if out.ndim == 2:  # a single channel can come back without its axis
        out = out[:, :, None]
    out = np.clip(out.transpose(2, 0, 1), 0.0, 1.0).astype(np.float32, copy=False)
    if mask is None:
        return out
    return out, np.asarray(moved, dtype=np.float32).transpose(2, 0, 1)
