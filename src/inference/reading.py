"""One test study straight from its DICOM folder to the cache-format volume(s) the members were trained on.

Called for every study test.csv names by src/inference/studies.py, in a reading process; the volumes
stay in memory, where the tasks build the models' inputs from them (src/inference/inputs.py). Members
are trained on the study cache (src.data.cache), whose in-plane size is their config's
``prepare.size``; reading a test study through the same function prepare uses
(src.data.prepare.prepare_study) gives the same volume a training study would have had. When members
were trained at different sizes, the study is decoded once at the original size and each slice
resized with prepare's own resize, which is what prepare_study does slice by slice, so the volumes are
the same as reading once per size, for one decode.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..data.prepare import prepare_study, resize_slice


def read_test_study(study_dir: Path, sizes, min_slices: int = 10) -> tuple[dict[int, tuple[np.ndarray, dict]], list[str]]:
    """``({size: (volume int16 (S, size, size), meta)}, warnings)`` for one study folder.

    Raises src.data.dicom_reader.StudyReadError when the study cannot be used (no readable slice,
    too few, slices of different sizes). Corrupt slices are skipped by the reader; they are listed in
    ``meta["skipped_files"]`` and their warnings are returned, not printed, so that the progress bar
    stays readable and the pipeline can put them in its summary.
    """
    sizes = sorted({int(s) for s in sizes})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if len(sizes) == 1:
            volume, meta, _ = prepare_study(Path(study_dir), sizes[0], min_slices=min_slices)
            out = {sizes[0]: (volume, meta)}
        else:
            full, meta, _ = prepare_study(Path(study_dir), 0, min_slices=min_slices)
            out = {}
            for size in sizes:
                volume = full if size <= 0 else np.stack([resize_slice(s, size) for s in full])
                out[size] = (volume, dict(meta, shape=list(volume.shape)))
    return out, [str(w.message) for w in caught]
