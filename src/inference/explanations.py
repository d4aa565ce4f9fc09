"""``python infer.py explain=true``: a picture of every predicted test study, beside the submission.

For each study the pipeline predicts, the first member that classifies vertebra crops with attention
(effnet_gru) is explained with its first fold: the very batch that fold was fed (src/inference/inputs.py),
the localisation rows it was cut with, and the study's volume at the member's cache size
(src/tasks/explanation.py, explanation_figure.py). Written to ``<submission's folder>/explanations/``:
``<uid>.png`` and ``index.html``. The picture's probabilities are that fold's; the submission's are
the ensemble's. A picture that cannot be drawn costs only itself and is counted in the closing line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .fallbacks import one_line


@dataclass
class TestExplainer:
    folder: Path
    entries: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # (uid, why)

    def add(self, uid: str, members, inputs: dict, volumes: dict, localisation) -> Path | None:
        """Draw ``uid`` with the first member that can be explained; returns the PNG, or None."""
        from ..models.registry import model_settings
        from ..tasks.explanation import explain_study
        from ..tasks.explanation_figure import draw_explanation
        from ..tasks.explanation_page import page_entry
        from ..tasks.vertebra import VertebraCrops, study_plans

        for member in members:
            fold = member.folds[0]
            batch = inputs.get(fold.input.key)
            if fold.input.task != "vertebra" or batch is None or isinstance(batch, BaseException):
                continue
            try:
                volume, meta = volumes[fold.input.size]
                plans = next(iter(study_plans(localisation).values()), {}) if localisation is not None else {}
                crops = VertebraCrops(model_settings(fold.cfg), fold.cfg["windows"])
                expl = explain_study(fold.model, crops, uid, volume, meta, plans, images=batch["images"],
                                     source=f"{member.run} fold {fold.fold}, test")
                png = draw_explanation(expl, self.folder / f"{uid}.png")
            except Exception as err:  # a picture must never cost the submission
                self.failures.append((uid, f"{member.run}: {one_line(err)}"))
                continue
            self.entries.append(page_entry(expl, png))
            return png
        return None

    def finish(self, announce=print) -> Path | None:
        """Write the page of every picture drawn; say how many and what failed."""
        from ..tasks.explanation_page import write_page

        page = write_page(self.entries, self.folder / "index.html", "test studies") if self.entries else None
        failed = f"; {len(self.failures)} could not be drawn (e.g. {self.failures[0][0]}: {self.failures[0][1]})" \
            if self.failures else ""
        announce(f"[explain] {len(self.entries)} picture(s) in {self.folder}{failed}")
        return page
