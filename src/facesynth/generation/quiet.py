"""diffusers and transformers held to what facesynth reports itself: their logging and progress bars."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet() -> Iterator[None]:
    """diffusers and transformers held to what facesynth reports itself: diffusers warns for every component an
    adapter leaves alone and logs a failed load before raising it (the error line says it once), T5 pipelines
    warn for every prompt CLIP truncates (T5 reads it whole), and transformers draws a progress bar for a text
    encoder's few adapter weights."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    level, bars = dlogging.get_verbosity(), tlogging.is_progress_bar_enabled()
    dlogging.set_verbosity(logging.CRITICAL)
    tlogging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # PEFT warns that a second adapter joins the first: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        dlogging.set_verbosity(level)
        if bars:
            tlogging.enable_progress_bar()


@contextmanager
def no_bars() -> Iterator[None]:
    """No loading bars from diffusers or transformers (``--quiet``)."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    bars = dlogging.is_progress_bar_enabled(), tlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        yield
    finally:
        for enabled, module in zip(bars, (dlogging, tlogging)):
            if enabled:
                module.enable_progress_bar()
