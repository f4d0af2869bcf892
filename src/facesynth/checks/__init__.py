"""What decides which candidate is kept: CLIP scoring and the zero-shot label check (:mod:`.scoring`), the
quality gates (:mod:`.quality`) and the independent verifiers (:mod:`.verifiers`)."""
