"""What a stage of a recipe sees (:class:`Context`): where each input is and the content id it holds.

    ctx = Context(recipe)
    ctx.path_of("model"), ctx.id_of("quantize-int4")   # the recipe's model; an earlier step's output

The recipe's model is named by its content id before anything loads: a fetched bundled model by its
manifest, a plain folder by the bytes of its weights (the id :func:`compress.models.load_model` gives it),
a ``.gguf`` file by its digest.
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import MANIFEST, file_digest, read_manifest
from .recipe import Recipe, Step


def model_folder(spec: str) -> Path | None:
    """The folder holding the model's config.json (bundled: the cache, once fetched); typed errors for
    models that must not load (pickle checkpoints, their own code)."""
    from ..checkpoints import check_gguf, inspect_hf_folder
    from ..models import resolve_model

    src = resolve_model(spec)
    if src.kind == "bundled":
        from ..fetch import cached_folder

        folder = cached_folder(src.spec)
        return folder if (folder / "config.json").is_file() else None
    if src.kind == "hf_dir":
        if not (src.path / MANIFEST).is_file():
            inspect_hf_folder(src.path)  # refuses pickle-only checkpoints and trust_remote_code models
        return src.path
    if src.kind == "gguf":
        from ..families import gguf_family

        check_gguf(src.path)
        gguf_family(src.path)  # a family compress cannot read from a .gguf is refused from the header
    return None


def root_id(spec: str) -> str | None:
    """The content id stages record for the recipe's model (None: not known until it is fetched)."""
    from ..models import resolve_model

    src = resolve_model(spec)
    if src.kind == "gguf":
        return "gguf:" + file_digest(src.path)[:16]
    if src.kind == "hub":
        return "hub:" + src.spec
    folder = model_folder(spec)
    if folder is None:
        return None
    if (folder / MANIFEST).is_file():
        return read_manifest(folder).content_id
    from ..checkpoints import inspect_hf_folder
    from ..content import folder_id  # the id load_model gives a plain folder: must be the same one

    return folder_id(folder, inspect_hf_folder(folder).weights)


class Context:
    """What stages see: input paths and content ids, and whether an output may be replaced."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.ids: dict[str, str | None] = {"model": root_id(recipe.model)}

    def path_of(self, key: str):
        return self.recipe.model if key == "model" else self.recipe.step(key).out

    def id_of(self, key: str) -> str | None:
        return self.ids.get(key)

    def force(self, step: Step) -> bool:
        """Replace the output only when it is this stage's own stale artifact (checked by check_outputs)."""
        return step.out.exists() and step.kind != "report" and any(step.out.iterdir())
