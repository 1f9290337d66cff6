"""What counts as a missing value in text: one definition for training and for serving.

A CSV cell is text, and people write "missing" in many ways. The host reads a training file
with this rule (:mod:`edgekit.data`) and the agent reads a replayed CSV with the same rule
(:mod:`device_agent.sources`), so a cell that trained as missing is served as missing, never
as a bad number or an unknown category. JSON rows need no rule: ``null`` is missing there.
"""

from __future__ import annotations

# Cell texts read as missing, compared after stripping and lower-casing.
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


def is_missing_text(text: str) -> bool:
    """Whether a cell's text stands for a missing value (``NA``, ``n/a``, ``?``, an empty cell…)."""
    return text.strip().lower() in MISSING_MARKERS
