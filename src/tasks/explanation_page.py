"""One HTML page that lays many explained studies out for browsing: a row per study with its eight
probabilities (labels beside them where known, fractured ones in red), its loss, and its picture
(src/tasks/explanation_figure.py) linked at full size. Self-contained: the pictures are referred to by
their path relative to the page, so the folder can be moved or zipped whole.

Called by src/reporting/explanations.py (``python -m src.explain``) and src/inference/explanations.py
(``python infer.py explain=true``).
"""
from __future__ import annotations

import html
import os
from pathlib import Path

from .. import TARGETS


def page_entry(expl, png: Path) -> dict:
    """What the page shows of one StudyExplanation whose picture is ``png``."""
    return {"uid": expl.uid, "png": Path(png), "probs": [float(p) for p in expl.probs],
            "labels": None if expl.labels is None else [float(v) for v in expl.labels],
            "loss": expl.patient_loss, "source": expl.source}


def _cell(prob: float, label: float | None) -> str:
    if label is None:
        return f"<td>{prob:.3f}</td>"
    style = ' class="fractured"' if label > 0.5 else ""
    return f"<td{style}>{prob:.3f} <small>({int(label > 0.5)})</small></td>"


def write_page(entries: list[dict], path: Path, title: str) -> Path:
    """Write the page for ``entries`` (:func:`page_entry`), in their order, to ``path``; returns it."""
    from ..io_utils import atomic_write_text

    path = Path(path)
    head = "".join(f"<th>{t}</th>" for t in TARGETS)
    rows = []
    for e in entries:
        labels = e["labels"] or [None] * len(TARGETS)
        loss = "" if e["loss"] is None else f"{e['loss']:.3f}"
        rows.append(
            f'<tr><td><a href="#{html.escape(e["uid"])}">{html.escape(e["uid"])}</a><br><small>'
            f'{html.escape(e["source"])}</small></td>' + "".join(_cell(p, l) for p, l in zip(e["probs"], labels))
            + f"<td>{loss}</td></tr>")
    pictures = "".join(f'<h3 id="{html.escape(e["uid"])}">{html.escape(e["uid"])}</h3>'
                       f'<a href="{html.escape(os.path.relpath(e["png"], path.parent))}"><img src="'
                       f'{html.escape(os.path.relpath(e["png"], path.parent))}" loading="lazy"></a>' for e in entries)
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} td:first-child{{text-align:left}}
.fractured{{color:#c62828;font-weight:bold}} img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{len(entries)} studies. Probabilities, with the label in brackets where known (fractured in red); the
last column is the study's competition loss. Each picture: the crops of C1..C7 the model read, the
attention under each slice (dashed: uniform), and sagittal and coronal reformats with the localiser's boxes.</p>
<table><tr><th>study</th>{head}<th>loss</th></tr>
{chr(10).join(rows)}
</table>
{pictures}
</body></html>
"""
    atomic_write_text(path, text)
    return path
