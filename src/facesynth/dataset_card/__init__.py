"""The dataset card: README.md's YAML and body built from the data (:mod:`.card`), with its sections (split and
label counts :mod:`.summary`, verifiers :mod:`.verification`, evaluation :mod:`.evaluation`), its pictures
(:mod:`.confusion`), the escaping every outside text goes through (:mod:`.escape`) and ``templates/card.md``."""

from .card import (BEGIN, END, GRID_CELL, GRID_COLUMNS, build_card, card_license, configs_and_infos, foreign_readme,
                   merge_card, sample_grid, write_card)
from .summary import summarize

__all__ = ["BEGIN", "END", "GRID_CELL", "GRID_COLUMNS", "build_card", "card_license", "configs_and_infos",
           "foreign_readme", "merge_card", "sample_grid", "summarize", "write_card"]
