"""``python -m src.explain run=effnet_gru``: a picture of each chosen study of a trained run, and a page of them.

Which studies: ``studies=top_errors`` (the default: the ``n`` held-out studies of the fold's oof.csv with the
highest competition loss), ``studies=fractured`` (its held-out studies with a fracture, the first ``n``),
``study=UID`` or ``studies=UID1,UID2``. Each picture shows, for C1..C7, the crops the classifier read with
the attention it gave each slice, the vertebra's probability and label, sagittal and coronal reformats
with the localiser's boxes, and patient_overall (src/tasks/explanation_figure.py). Written to
``out=`` (default ``runs/<run>/fold<k>/explanations/``): ``<uid>.png`` and ``index.html``. Data, cache and
localisation table come from the run's config.yaml unless ``data_dir=``, ``cache_dir=``,
``localisation_table=`` say otherwise. The work lives in src/reporting/explanations.py.
"""
from __future__ import annotations

from .config import ConfigError, parse_overrides, run_main
from .runs import RunNotFoundError

DEFAULTS = {"run": "effnet_gru", "fold": 0, "runs_dir": "runs", "study": "", "studies": "top_errors", "n": 8,
            "out": "", "data_dir": "", "cache_dir": "", "localisation_table": "", "device": "cpu"}


def main(argv: list[str]) -> dict:
    from pathlib import Path

    from .reporting.explanations import explain_run
    from .training.device import pick_device

    args = parse_overrides(argv, DEFAULTS)
    try:
        device = pick_device(args)
    except RuntimeError as err:  # device=cuda without one: a setting, so one line
        raise ConfigError(str(err)) from None
    try:
        result = explain_run(Path(args["runs_dir"]), args["run"], int(args["fold"]), args["study"] or args["studies"],
                             int(args["n"]), Path(args["out"]) if args["out"] else None, args["data_dir"],
                             args["cache_dir"], args["localisation_table"], device)
    except RunNotFoundError as err:
        raise ConfigError(str(err)) from None
    print(f"[explain] {len(result['pictures'])} picture(s) in {result['out']}; browse {result['page']}")
    return result


if __name__ == "__main__":
    run_main(main)
