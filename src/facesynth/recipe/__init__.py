"""Recipes: the schema (:mod:`.schema`), reading YAML (:mod:`.loading`) and the shipped ``recipes/*.yaml``."""

from .identities import Identities
from .loading import first_error, load_recipe, parse_recipe, recipe_of, resolve, shipped_recipes, with_identities
from .schema import (DEFAULT_SETTINGS, NAME_CHARS, PRESET_FAMILIES, PRESETS, RESERVED_ATTRIBUTES, RESERVED_CONFIGS,
                     SCHEDULER_NAMES, SPEEDUPS, SPLITS, Attribute, Balance, Lora, Recipe, Settings, Stratum, Value,
                     Verify, placeholders, switch_step)

__all__ = ["DEFAULT_SETTINGS", "NAME_CHARS", "PRESETS", "PRESET_FAMILIES", "RESERVED_ATTRIBUTES", "RESERVED_CONFIGS",
           "SCHEDULER_NAMES", "SPEEDUPS", "SPLITS", "Attribute", "Balance", "Lora", "Recipe", "Settings", "Stratum",
           "Value", "Verify", "Identities", "first_error", "load_recipe", "parse_recipe", "placeholders", "recipe_of",
           "resolve", "shipped_recipes", "switch_step", "with_identities"]
