"""Generation: load a Stable Diffusion pipeline, make best-of-N candidates, rerank with CLIP, write shards."""

from .engine import Engine, EngineOptions, Winner
from .loading import load_pipeline
from .runner import GenerateConfig, GenerateResult, generate

__all__ = ["Engine", "EngineOptions", "GenerateConfig", "GenerateResult", "Winner", "generate", "load_pipeline"]
