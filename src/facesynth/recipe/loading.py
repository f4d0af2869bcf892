"""Reading a recipe: a shipped name or a YAML file, parsed safely and checked across keys.

Every problem is reported as one line naming the file, the key path (or the YAML line) and what is wrong,
for example ``recipes/x.yaml: attributes.emotion.values: must not be empty``.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import RecipeError
from .identities import Identities, check as check_identities
from .schema import RESERVED_CONFIGS, Recipe, _expand_strata, placeholders

MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_DEPTH = 64  # nesting levels a recipe may use (it needs five or six)
MAX_ALIASES = 256  # *alias references a recipe may use (each can stand for a whole subtree)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys instead of keeping the last, and keys that are not text;
    merge keys (``<<: *base``) merge, and a key written out beats a merged one, as YAML says."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                if isinstance(key, (list, dict, set)):
                    raise RecipeError(f"line {line}: a {type(key).__name__} is used as a key; keys are text")
                shown = str(key).lower() if isinstance(key, bool) else repr(key)
                raise RecipeError(f"line {line}: the key {shown:.60} is a {type(key).__name__}, not text; write it "
                                  "in quotes")
            if key in seen:
                raise RecipeError(f"line {line}: duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_shape(text: str) -> None:
    """Nesting and aliases within bounds, found by the scanner alone (it does not recurse), so a structure nested
    thousands deep or a "billion laughs" of aliases is one line naming where, not a crash."""
    depth, aliases = 0, 0
    opens = (yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken, yaml.FlowSequenceStartToken,
             yaml.FlowMappingStartToken)
    closes = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, opens):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"line {token.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep; a "
                                  "recipe needs a few")
        elif isinstance(token, closes):
            depth -= 1
        elif isinstance(token, yaml.AliasToken):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise RecipeError(f"line {token.start_mark.line + 1}: more than {MAX_ALIASES} aliases (*name); "
                                  "write the values out")


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship with facesynth."""
    folder = resources.files("facesynth.recipe") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve(name_or_path: str | Path) -> tuple[str, str]:
    """Return (source label, YAML text) for a shipped recipe name or a file path."""
    path = Path(name_or_path)
    if path.is_file():
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: cannot read: {exc}") from exc
    name = str(name_or_path)
    if name in shipped_recipes():
        text = (resources.files("facesynth.recipe") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
        return f"recipes/{name}.yaml", text
    raise RecipeError(f"{name}: no such recipe file, and not a shipped recipe ({', '.join(shipped_recipes())})")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe by shipped name or by path."""
    source, text = resolve(name_or_path)
    return parse_recipe(text, source)


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Parse YAML text into a validated Recipe; errors name ``source``."""
    try:
        _check_shape(text)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if problem.startswith("could not determine a constructor for the tag"):
            tag = problem.rsplit(" ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
            problem = f"the tag {tag} is not plain YAML; a recipe holds text, numbers, lists and mappings only"
        elif problem == "but found another document":
            problem = "a second YAML document ('---'); a recipe is one document"
        raise RecipeError(f"{source}: YAML syntax error: {where}{problem}") from None
    except RecursionError:  # a recursive alias that something below walks without end
        raise RecipeError(f"{source}: an alias refers to a mapping that holds it (a loop); write the values "
                          "out") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a YAML mapping of keys to values")
    data = {k: v for k, v in data.items() if not k.startswith("x-")}  # x-...: a place for anchors (&base)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source}: {first_error(exc)}") from None
    except RecursionError:
        raise RecipeError(f"{source}: an alias refers to a mapping that holds it (a loop); write the values "
                          "out") from None
    problem = _cross_check(recipe)
    if problem:
        raise RecipeError(f"{source}: {problem}")
    return recipe


def first_error(exc: ValidationError) -> str:
    """The most telling problem: an unknown key before the missing key it was probably meant to be."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err["loc"])  # a key may hold a newline
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] == "extra_forbidden":
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == err["loc"][:-1]]
        known = difflib.get_close_matches(str(err["loc"][-1]), missing, n=1)
        msg = f"unknown key (did you mean '{known[0]}'?)" if known else "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "finite_number":
        msg = "must be a finite number (not NaN or infinity)"
    return f"{loc}: {msg}" if loc else msg


def _cross_check(recipe: Recipe) -> str | None:
    """Checks that span several keys; returns the first problem or None."""
    attrs = recipe.attributes
    if recipe.primary not in attrs:
        return f"primary: '{recipe.primary}' is not an attribute ({', '.join(attrs)})"
    for key in ("template", "caption"):
        text = getattr(recipe, key)
        if text is None:
            continue
        try:
            fields = placeholders(text)
        except ValueError as exc:
            return f"{key}: {exc}"
        for field in fields:
            if field not in attrs:
                return f"{key}: placeholder '{{{field}}}' names no attribute"
    primary_values = attrs[recipe.primary].values
    for value in primary_values:
        if value in RESERVED_CONFIGS:
            return (f"attributes.{recipe.primary}.values: '{value}' is reserved for the dataset's "
                    "all-rows config; name the value otherwise")
    if recipe.identities is not None:
        problem = check_identities(recipe, recipe.identities)
        if problem:
            return problem
    for attr in recipe.verify:
        if attr not in attrs:
            return f"verify.{attr}: not an attribute ({', '.join(attrs)})"
        if "other" in attrs[attr].values:
            return (f"verify.{attr}: a verifier says 'other' for what is none of the values, so no value may be "
                    "named 'other'; name it otherwise")
    if recipe.balance.cross is not None:
        seen = set()
        for i, axis in enumerate(recipe.balance.cross):
            if axis not in attrs:
                return f"balance.cross.{i}: '{axis}' is not an attribute"
            if axis in seen:
                return f"balance.cross.{i}: '{axis}' is listed twice"
            seen.add(axis)
        return None
    return _check_strata(recipe)


def _check_strata(recipe: Recipe) -> str | None:
    attrs = recipe.attributes
    cells = set()
    for i, row in enumerate(recipe.balance.strata or []):
        where = f"balance.strata.{i}"
        if not isinstance(row, dict) or not row:
            return f"{where}: must be a mapping of attribute values and a count"
        keyed = [k for k, v in row.items() if isinstance(v, dict)]
        if "count" in row and keyed:
            return f"{where}: give either 'count' or one attribute with per-value counts, not both"
        if "count" not in row and len(keyed) != 1:
            return f"{where}: needs 'count', or exactly one attribute with per-value counts"
        for key, value in row.items():
            if key == "count":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    return f"{where}.count: must be a whole number >= 0"
                continue
            if key not in attrs:
                return f"{where}.{key}: not an attribute"
            if not isinstance(value, (str, dict)):
                return (f"{where}.{key}: must be one value name, or a mapping of value names to counts "
                        f"(got {type(value).__name__} {value!r})")
            choices = value if isinstance(value, dict) else {value: 1}
            for name, n in choices.items():
                if name not in attrs[key].values:
                    return f"{where}.{key}: unknown value '{name}'"
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    return f"{where}.{key}.{name}: count must be a whole number >= 0"
    for stratum in _expand_strata(recipe.balance.strata or []):
        key = tuple(sorted(stratum.labels))
        if key in cells:
            return f"balance.strata: the cell {dict(key)} is listed twice"
        cells.add(key)
    if sum(s.count for s in _expand_strata(recipe.balance.strata or [])) == 0:
        return "balance.strata: counts add up to 0"
    return None


def with_identities(recipe: Recipe, spec: dict[str, Any] | Identities | None, where: str = "--identities") -> Recipe:
    """``recipe`` with its identity sets replaced by ``spec`` (``--identities``, or what a manifest recorded),
    checked as a recipe's own would be."""
    if spec is None:
        return recipe
    identities = spec if isinstance(spec, Identities) else Identities.model_validate(spec)
    problem = check_identities(recipe, identities, where)
    if problem:
        raise RecipeError(problem)
    return recipe.model_copy(update={"identities": identities})


def recipe_of(manifest) -> Recipe:
    """The recipe a dataset folder was made with: its YAML as recorded, with the identity sets the run used."""
    recipe = parse_recipe(manifest["recipe"]["yaml"], manifest["recipe"]["source"])
    return with_identities(recipe, (manifest.get("plan") or {}).get("identities"), "manifest.json: plan.identities")
