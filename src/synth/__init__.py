"""The synthetic demo dataset: CT studies of the neck in the exact Kaggle RSNA 2022 layout.

``python -m src.synthesise out=DIR n_train=N n_test=M size=demo|full seed=S`` writes a dataset
(see src/synth/generate.py); src.paths calls :func:`src.synth.generate.generate_dataset` when no
real data is configured. The parts, one job each:

- ``shapes``       signed-distance solids (slabs, rings, bars, capsules) the anatomy is made of
- ``anatomy``      the HU volume and vertebra label volume of one study, built from those shapes
- ``fractures``    the labels a study is drawn with and the low-density clefts that show them
- ``study``        one study in memory: geometry, slice numbering, anatomy and fractures together
- ``dicom_writer`` slices to DICOM files (uncompressed, JPEG Lossless, RLE, JPEG 2000)
- ``nifti``        label volumes to NIfTI files in the orientation of the real segmentations
- ``generate``     the whole dataset: CSVs, images, masks
- ``figure``       the README picture of one study beside its mask
"""
