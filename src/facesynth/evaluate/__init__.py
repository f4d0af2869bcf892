"""``facesynth evaluate``: how good a dataset is, measured on the CLIP embeddings its rows hold (:mod:`.measure`,
:mod:`.metrics`) and against real photos (:mod:`.real`, read with memory bounded by :mod:`.images`)."""

from .measure import Embeddings, diversity_report, evaluate, read_embeddings, refresh
from .real import RealSpec

__all__ = ["Embeddings", "RealSpec", "diversity_report", "evaluate", "read_embeddings", "refresh"]
