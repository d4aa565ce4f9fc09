"""From trained runs to a Kaggle code-competition submission: ``python -m src.kaggle build|check|push``.

- environment.py  what Kaggle's image is assumed to hold, what inference needs beyond it (pinned from this env)
- wheels.py       binary wheels of those packages for the image's Python and platform (``pip download``)
- weights.py      the weights dataset: each member's chosen folds, the localiser, ensemble.json, manifest.json
- notebook.py     the submission notebook (install offline, run infer.py) and the Kaggle metadata files
- build.py        dist/kaggle/: the code dataset, the weights dataset, the notebook folder
- check.py        the package proved offline: a clean venv, the notebook executed, its submission compared
- push.py         the official ``kaggle`` CLI commands that upload it all and submit

Sits above src/inference (it runs infer.py and reads its settings); only src/kaggle.py calls it.
"""
