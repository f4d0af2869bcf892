"""``facesynth recipes`` and ``facesynth plan``: what the shipped recipes are, and what a plan holds."""

from __future__ import annotations

from pathlib import Path

import click

from .core import main

@main.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes."""
    from ..recipe import load_recipe, shipped_recipes

    names = shipped_recipes()
    width = max(map(len, names))
    for name in names:
        click.echo(f"{name:{width}s}  {load_recipe(name).description}")


@main.command("plan")
@click.argument("recipe")
@click.option("--num-samples", "-n", type=int, help="Samples to plan (default: all strata of a strata recipe).")
@click.option("--seed", type=int, help="Master seed (default: the recipe's).")
@click.option("--candidates", type=int, default=3, show_default=True, help="Candidates per sample.")
@click.option("--identities", metavar="ATTR[,ATTR]", help="Identity sets varying these attributes (see generate).")
@click.option("--by", help="Attribute to break counts down by (default: gender if there is one, else the primary).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the plan as JSONL.")
def plan_cmd(recipe: str, num_samples: int | None, seed: int | None, candidates: int, identities: str | None,
             by: str | None, output: Path | None) -> None:
    """Print the counts a recipe plans, per attribute value and split.

    \b
    Examples:
      facesynth plan agfd
      facesynth plan emotions --num-samples 1000 --seed 7 -o plan.jsonl
      facesynth plan my_recipe.yaml -n 200
    """
    from ..plan import Plan, balance_report, format_balance, format_counts
    from ..recipe import load_recipe

    r = load_recipe(recipe)
    if identities:
        from ..recipe import with_identities
        from ..recipe.identities import parse_option

        try:
            vary = parse_option(identities)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--identities") from None
        r = with_identities(r, {**(r.identities.content() if r.identities else {}), "vary": vary})
    if by is None:
        by = "gender" if "gender" in r.attributes and r.primary != "gender" else r.primary
    plan = Plan(r, num_samples, seed, candidates)
    if by not in r.attributes:
        raise click.BadParameter(f"'{by}' is not an attribute ({', '.join(r.attributes)})", param_hint="--by")
    click.echo(format_counts(plan, by))
    click.echo("\n" + format_balance(balance_report(plan)))
    if output:
        plan.write_jsonl(output)
        click.echo(f"wrote {len(plan)} samples to {output}")
