"""What Kaggle's image is assumed to hold, and the pinned packages the inference path needs beyond it.

Called by the build (which downloads a wheel for every pin) and the check (which makes a clean
environment holding only the image's packages). The assumption is stated once, here: ``KAGGLE_IMAGE``.
Check it against the image a notebook really gets with, in a Kaggle notebook cell,
``!python -V; pip list 2>/dev/null | grep -i -E "^(torch|timm|monai|pydicom|numpy) "`` (README,
"Submitting to Kaggle"). Everything the inference path imports that is not in the image, nor needed by
something in the image, is shipped, pinned to the version installed in the environment this runs in:
the versions the project's tests and the reference ``python infer.py`` ran with.

What the inference path imports was found by running infer.py with every other third-party package
blocked (matplotlib, albumentations and W&B are imported only for training or plots), and by check
itself: OpenCV is imported only when slices are shrunk to a model's cache size, which the demo (128 px
slices, 128 px cache) never does, and tests/test_kaggle.py's end-to-end check on 32 px studies read at
16 px caught it. ``INFERENCE_NEEDS`` lists the roots; each one's own requirements follow from its metadata.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

from packaging.markers import Marker
from packaging.requirements import Requirement

# Distributions assumed present on Kaggle's GPU image (with whatever they require); the kernel runs on
# ipykernel. Everything else the inference path needs is shipped as a wheel.
KAGGLE_IMAGE = ("torch", "torchvision", "numpy", "pandas", "scipy", "scikit-learn", "PyYAML", "tqdm", "pillow",
                "ipykernel")

# Distributions the inference path imports beyond the image, with the module each is imported as.
INFERENCE_NEEDS = {
    "timm": "timm",
    "monai": "monai",
    "omegaconf": "omegaconf",
    "pydicom": "pydicom",
    "pylibjpeg": "pylibjpeg",
    "pylibjpeg-libjpeg": "libjpeg",
    "pylibjpeg-openjpeg": "openjpeg",
    "pylibjpeg-rle": "rle",
    "python-gdcm": "gdcm",
    "dicomsdl": "dicomsdl",
    "nibabel": "nibabel",
    "opencv-python-headless": "cv2",  # shrinking slices to the cache size (src/data/prepare.py)
}

DEFAULT_PYTHON = "3.11"                     # Kaggle's image in 2025-2026
DEFAULT_PLATFORM = "manylinux_2_35_x86_64"  # Ubuntu 22.04's glibc 2.35 on x86-64


@dataclass(frozen=True)
class Pin:
    name: str       # the distribution, as its metadata spells it
    version: str
    module: str     # what the inference path imports ("" for a dependency it does not import itself)

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def canonical(name: str) -> str:
    """PEP 503 name: what pip and wheel file names compare (``python_gdcm`` = ``python-gdcm``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python_version: str) -> dict:
    """Marker values of the target image (Linux x86-64, ``python_version``), for requirements' markers."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0",
            "platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64",
            "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "extra": ""}


def requirements_of(name: str, python_version: str) -> list[str]:
    """The distributions ``name`` requires on the target (extras and other platforms' requirements left out)."""
    env = target_environment(python_version)
    out = []
    for line in metadata.distribution(name).requires or []:
        req = Requirement(line)
        if req.marker is None or Marker(str(req.marker)).evaluate(env):
            out.append(req.name)
    return out


def closure(roots, python_version: str) -> dict[str, str]:
    """{canonical name: installed name} of ``roots`` and everything they require, as installed here.

    Raises PackageNotFoundError naming the first distribution this environment lacks.
    """
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = canonical(name)
        if key in found:
            continue
        dist = metadata.distribution(name)
        found[key] = dist.metadata["Name"]
        todo += requirements_of(name, python_version)
    return found


def image_distributions(python_version: str = DEFAULT_PYTHON, image=KAGGLE_IMAGE) -> dict[str, str]:
    """The image's assumed distributions and what they require, as installed in this environment."""
    return closure(image, python_version)


def shipped_pins(python_version: str = DEFAULT_PYTHON, image=KAGGLE_IMAGE, needs=None) -> list[Pin]:
    """Every distribution the inference path needs that the image lacks, pinned to this environment's version."""
    needs = INFERENCE_NEEDS if needs is None else needs
    in_image = image_distributions(python_version, image)
    modules = {canonical(name): module for name, module in needs.items()}
    pins = []
    for key, name in sorted(closure(needs, python_version).items()):
        if key not in in_image:
            pins.append(Pin(name, metadata.version(name), modules.get(key, "")))
    return pins
