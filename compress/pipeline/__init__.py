"""``compress run``: a recipe file (YAML) runs the whole pipeline, skipping stages already done.

    from compress.pipeline import load_recipe, run_recipe
    result = run_recipe(load_recipe("recipes/default.yaml"), echo=print)
"""

from .recipe import Recipe, Step, load_recipe
from .runner import dry_run, plan, run_recipe
from .stages import STAGES

__all__ = ["Recipe", "STAGES", "Step", "dry_run", "load_recipe", "plan", "run_recipe"]
