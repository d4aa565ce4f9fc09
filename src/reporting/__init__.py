"""Comparing experiments from their run folders alone (no W&B account needed).

``python -m src.report`` (src/report.py) is the entry point; the work is split by job:
runs.py reads run folders, tables.py turns them into leaderboards (pure pandas), oof.py scores the
concatenated out-of-fold predictions, markdown.py renders the tables, plots.py draws the PNGs.
"""
