"""The record of everything that did not go the normal way during inference, and what was done instead.

Filled by the inference pipeline while it runs (and by test.csv's reader and the member loader before
that) and printed as a summary at the end, so a Kaggle log shows at a glance how many of the hidden
studies fell back to the prior, which rows test.csv could not explain, and which member was left out.
Each entry names its subject once: a study UID, a row_id (or ``line N`` of test.csv), a folder, or a
member (``run`` or ``run fold k``). Kinds, by subject:

studies
- ``absent``       named in test.csv, no folder in test_images                -> prior
- ``bad_uid``      the test.csv UID is not a DICOM UID, so it is never a path  -> prior
- ``unreadable``   the folder has no (or too few) readable slices             -> prior
- ``slices``       some slices were corrupt and skipped; the rest were used   -> prediction as usual
- ``localiser``    localisation failed; vertebra crops from an even split      -> prediction as usual
- ``levels``       the localisation failed the level checks (flagged or repaired) -> prediction as usual
- ``view``         a slice-shift view (tta_shifts) could not be built          -> the other views
- ``member``       one member failed on the study; the others predicted        -> remaining members
- ``all_members``  every member failed                                         -> prior
- ``not_requested`` beyond limit_studies                                       -> prior
- ``error``        anything else that went wrong with the study (memory)      -> prior

rows of test.csv (src/inference/test_csv.py; row_id is what Kaggle scores, so it decides)
- ``bad_row``      row_id is empty or not <StudyInstanceUID>_<prediction_type> with a known type
                   -> the mean label rate (no row_id: no row, since Kaggle cannot score it)
- ``row_mismatch`` StudyInstanceUID/prediction_type disagree with row_id (or are empty) -> what row_id says
- ``repeated_row`` the row_id appears more than once                           -> written once

folders and members
- ``unnamed_folder`` a folder in test_images that test.csv does not name       -> ignored
- ``left_out``     a member, a fold of one, or the localiser could not load    -> the rest predict
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

# kind -> (what its entries are, what was done about them): the summary's words
KINDS = {
    "absent": ("studies", "prior"),
    "bad_uid": ("studies", "prior"),
    "unreadable": ("studies", "prior"),
    "slices": ("studies", "kept"),
    "localiser": ("studies", "kept"),
    "levels": ("studies", "kept"),
    "view": ("studies", "kept"),
    "member": ("studies", "kept"),
    "all_members": ("studies", "prior"),
    "not_requested": ("studies", "prior"),
    "error": ("studies", "prior"),
    "bad_row": ("rows", "mean label rate; a row without a row_id is not written"),
    "row_mismatch": ("rows", "predicted as its row_id says"),
    "repeated_row": ("rows", "written once"),
    "unnamed_folder": ("folders", "ignored"),
    "left_out": ("members", "left out; the rest predict"),
}
USES_PRIOR = {kind for kind, (subject, action) in KINDS.items() if subject == "studies" and action == "prior"}


@dataclass
class FallbackLog:
    events: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, uid: str, detail: str = "") -> None:
        """Record that ``uid`` (the subject: study, row, folder or member) went the ``kind`` way."""
        if kind not in KINDS:  # a typo here would print a kind the summary cannot explain
            raise ValueError(f"unknown fallback kind {kind!r}; add it to KINDS in {__name__}")
        self.events[kind].append((uid, detail))

    def count(self, kind: str) -> int:
        return len(self.events.get(kind, []))

    def uids(self, kind: str) -> list[str]:
        return [uid for uid, _ in self.events.get(kind, [])]

    def prior_studies(self) -> set[str]:
        return {uid for kind in USES_PRIOR for uid in self.uids(kind)}

    def summary(self, n_studies: int, prior_source: str, show: int = 5) -> str:
        lines = [f"[summary] {n_studies} studies; {n_studies - len(self.prior_studies())} predicted by the models, "
                 f"{len(self.prior_studies())} given the prior ({prior_source})"]
        if not self.events:
            lines.append("[summary] no fallback was needed")
        for kind in sorted(self.events):
            items = self.events[kind]
            subjects, action = KINDS[kind]
            lines.append(f"[summary] {kind} ({action}): {len(items)} {subjects}")
            for uid, detail in items[:show]:
                lines.append(f"    {uid}: {detail}" if detail else f"    {uid}")
            if len(items) > show:
                lines.append(f"    ... and {len(items) - show} more")
        return "\n".join(lines)


def one_line(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut at ``limit`` characters: some errors (a state dict that does
    not fit) run to pages, and a log entry or an error message must stay one readable line."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
