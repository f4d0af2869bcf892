"""The plan: a recipe and a size made into exactly balanced samples (:mod:`.samples`), the orders that balance
them (:mod:`.cross_order`, :mod:`.order_search`, :mod:`.balance`, :mod:`.split_order`), the shards they go to
(:mod:`.layout`), and what ``facesynth plan`` reports (:mod:`.report`)."""

from .report import balance_report, format_balance, format_counts, share_report
from .samples import Plan, Sample, cell_key, deficit_order, derive_seed, recipe_split_table, smooth_sequence

__all__ = ["Plan", "Sample", "balance_report", "cell_key", "deficit_order", "derive_seed", "format_balance",
           "format_counts", "recipe_split_table", "share_report", "smooth_sequence"]
