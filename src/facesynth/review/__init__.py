"""Review: the gallery's rows and verdicts (:mod:`.gallery`), its HTTP server (:mod:`.server`, the ``review``
extra), the append-only verdict log (:mod:`.verdicts`) and the review rounds that make rejected rows again
(:mod:`.rounds`)."""
