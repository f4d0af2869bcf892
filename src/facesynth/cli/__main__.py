"""``python -m facesynth.cli``: the same command line as ``facesynth``."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="facesynth")
