"""``python -m facesynth``: the same command line as ``facesynth``."""

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="facesynth")
