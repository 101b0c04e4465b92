"""Results galleries: one card per item, in the browser UI and in a shareable HTML file.

- `cards`: an item row -> a `Card` (plain data; no database, storage or markup);
- `truth`: the true labels of a job's images, from its dataset's manifest (cached);
- `html`: `write_report`, the self-contained HTML file, from the templates in
  `templates/`.
"""

from xmlx.report.cards import (
    Card,
    LabelScore,
    hierarchy_path,
    hierarchy_units,
    item_card,
    path_text,
)
from xmlx.report.html import write_report
from xmlx.report.truth import TRUTH, TruthCache

__all__ = [
    "TRUTH",
    "Card",
    "LabelScore",
    "TruthCache",
    "hierarchy_path",
    "hierarchy_units",
    "item_card",
    "path_text",
    "write_report",
]
