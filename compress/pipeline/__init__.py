"""``compress run``: a recipe file (YAML) runs the whole pipeline, skipping stages already done.

    from compress.pipeline import load_recipe, run_recipe
    result = run_recipe(load_recipe("recipes/default.yaml"), echo=print)

Modules in the order data flows, each importing only those before it: :mod:`.recipe` (the file, parsed
into steps and stage configs), :mod:`.context` (the input paths and content ids a step sees),
:mod:`.checks` (``--dry-run``'s checks without weights), :mod:`.stages` (each step kind's verb, content
id and dry-run check), :mod:`.runner` (plan, skip what is done, run the rest) and :mod:`.cli`.
"""

from .recipe import Recipe, Step, load_recipe
from .runner import dry_run, plan, run_recipe
from .stages import STAGES

__all__ = ["Recipe", "STAGES", "Step", "dry_run", "load_recipe", "plan", "run_recipe"]
