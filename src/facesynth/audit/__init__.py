"""``facesynth audit``: a classifier's figures on each group of a dataset (:mod:`.figures`, through fairlearn),
whether its prediction flips when only one attribute changes (:mod:`.counterfactual`, on identity sets), the
predictions that feed them (:mod:`.predict`), and the report (:mod:`.report`); :mod:`.run` ties them."""

from .run import audit

__all__ = ["audit"]
