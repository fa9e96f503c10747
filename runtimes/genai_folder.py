"""Folders that onnxruntime-genai runs: ``genai_config.json`` beside an ONNX decoder graph.

Our ONNX export writes one under its manifest; onnxruntime-genai's model builder
(``python -m onnxruntime_genai.models.builder -i MODEL -o OUT -p int4 -e cpu``) writes one without any
manifest of ours. Bench measures the builder's folders beside our exports as a *foreign* kind
(:data:`compress.kinds.FOREIGN`): this module is where such a folder is validated at the boundary and
described, for bench's targets (:func:`inspect_genai_folder`, in the parent process) and for the two runtimes
that load it (:func:`read_genai_folder`: JSON only, nothing that would land in a measured process's memory).

    g = read_genai_folder(Path("runs/q14/genai-builder-smollm2"))
    g.model_file, g.max_length, g.kv_heads, g.head_size, g.share_buffer
    inspect_genai_folder(folder)   # {"model_file": "model.onnx", "weight_files": {...}, "our_loop": True, ...}

A folder is refused with one :class:`ArtifactError` naming ``genai_config.json`` and the field when it is not
a text decoder that onnxruntime-genai and our harness can both drive: a multimodal package (vision, speech or
embedding models beside the decoder), a pipeline of several decoder graphs, or a field missing or mistyped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from compress.errors import ArtifactError
from compress.jsonfile import read_json

GENAI_CONFIG = "genai_config.json"

# the names our loop (runtimes/onnx_runtime.py) feeds and reads; a graph named otherwise runs in genai only
OUR_NAMES = {("inputs", "input_ids"): "input_ids", ("inputs", "attention_mask"): "attention_mask",
             ("inputs", "past_key_names"): "past_key_values.%d.key",
             ("inputs", "past_value_names"): "past_key_values.%d.value",
             ("outputs", "logits"): "logits", ("outputs", "present_key_names"): "present.%d.key",
             ("outputs", "present_value_names"): "present.%d.value"}
OUR_INPUTS = ("input_ids", "attention_mask", "logits_to_keep")  # besides past_key_values.*
OUR_KV_TYPES = ("float32", "float16")
# model sections of onnxruntime-genai's multimodal packages (phi3v, whisper, phi4mm, qwen2.5-vl ...)
_NOT_TEXT = ("vision", "speech", "embedding", "encoder")


@dataclasses.dataclass(frozen=True)
class GenaiFolder:
    folder: Path
    config: dict[str, Any]  # genai_config.json as read
    model_file: Path  # the decoder graph (model.decoder.filename)
    max_length: int  # search.max_length: the longest sequence the generator is set up for
    layers: int
    kv_heads: int
    head_size: int
    vocab: int
    share_buffer: bool  # search.past_present_share_buffer: the graph takes one buffer as past and present

    def kv_bytes_per_position(self, elem_bytes: int) -> float:
        """K and V bytes one position adds to the cache, over all layers (the graph's KV inputs leave the
        head size symbolic: the builder's ``kv_cache_dim``)."""
        return 2.0 * self.layers * self.kv_heads * self.head_size * elem_bytes


def _field(where: Path, obj: dict[str, Any], path: str, kind: type | tuple[type, ...], *, positive: bool = False):
    """``obj``'s field at the dotted ``path``, of type ``kind``; ArtifactError naming the file and field."""
    cur: Any = obj
    for i, part in enumerate(path.split(".")):
        if not isinstance(cur, dict) or part not in cur:
            at = ".".join(path.split(".")[:i + 1])
            raise ArtifactError(f"{where}: {at} is missing; onnxruntime-genai's model builder writes it for a "
                                "decoder (not a folder bench can run)")
        cur = cur[part]
    if isinstance(cur, bool) or not isinstance(cur, kind) or (positive and cur <= 0):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ArtifactError(f"{where}: {path} is {cur!r}; expected {'a positive ' if positive else 'a '}{want}")
    return cur


def read_genai_folder(folder: str | Path) -> GenaiFolder:
    """Validate ``folder/genai_config.json`` as a text decoder and describe it (reads JSON only).

    >>> read_genai_folder("runs/q14/genai-builder-smollm2").head_size
    64
    """
    folder = Path(folder)
    where = folder / GENAI_CONFIG
    if not where.is_file():
        raise ArtifactError(f"{folder}: no {GENAI_CONFIG}; not a folder onnxruntime-genai runs")
    cfg = read_json(where, ArtifactError, problem="not readable JSON")
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{where}: a JSON {type(cfg).__name__}, not an object")
    model = _field(where, cfg, "model", dict)
    _field(where, cfg, "model.type", str)
    for section in _NOT_TEXT:
        if section in model:
            raise ArtifactError(f"{where}: model.{section}: a multimodal package ({model['type']}); bench runs text "
                                "decoders only")
    decoder = _field(where, cfg, "model.decoder", dict)
    if "pipeline" in decoder:
        raise ArtifactError(f"{where}: model.decoder.pipeline: a decoder split into several graphs; bench runs a "
                            "decoder that is one graph")
    filename = _field(where, cfg, "model.decoder.filename", str)
    for name in ("input_ids", "attention_mask"):
        _field(where, cfg, f"model.decoder.inputs.{name}", str)
    _field(where, cfg, "model.decoder.outputs.logits", str)
    model_file = folder / filename
    if not model_file.is_file():
        raise ArtifactError(f"{where}: model.decoder.filename names {filename!r}, which is not in {folder}")
    return GenaiFolder(
        folder=folder, config=cfg, model_file=model_file,
        max_length=_field(where, cfg, "search.max_length", int, positive=True),
        layers=_field(where, cfg, "model.decoder.num_hidden_layers", int, positive=True),
        kv_heads=_field(where, cfg, "model.decoder.num_key_value_heads", int, positive=True),
        head_size=_field(where, cfg, "model.decoder.head_size", int, positive=True),
        vocab=_field(where, cfg, "model.vocab_size", int, positive=True),
        share_buffer=bool(cfg.get("search", {}).get("past_present_share_buffer", False)))


def loop_blocker(g: GenaiFolder, input_names: Iterable[str]) -> str | None:
    """Why our own loop cannot drive this graph (None: it can): the names genai_config gives the graph's
    inputs and outputs must be ours, and the graph may take no input besides ours (a ``position_ids`` or an
    ``inputs_embeds`` is fed by onnxruntime-genai only)."""
    dec = g.config["model"]["decoder"]
    for (side, key), ours in OUR_NAMES.items():
        theirs = dec.get(side, {}).get(key)
        if theirs != ours:
            return f"model.decoder.{side}.{key} is {theirs!r}; our loop feeds {ours!r}"
    extra = sorted(n for n in input_names if n not in OUR_INPUTS and not n.startswith("past_key_values."))
    if extra:
        return f"graph input {extra[0]!r}: our loop feeds {', '.join(OUR_INPUTS)} and past_key_values.*"
    return None


def inspect_genai_folder(folder: str | Path) -> dict[str, Any]:
    """What a manifest would tell bench about a foreign onnxruntime-genai folder: the decoder's file, its
    weight files with their sizes (the graph and the external data files it names), and whether our loop can
    run it (``our_loop``; ``our_loop_refused`` says why not). Parses the graph without its weights."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    g = read_genai_folder(folder)
    try:
        graph = onnx.load(str(g.model_file), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001 - any parse failure is the same finding: not a graph we can read
        raise ArtifactError(f"{g.model_file}: not a readable ONNX graph ({type(e).__name__}: {e})") from None
    files = {g.model_file.name}
    for init in graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                files.add(entry.value)
    missing = sorted(f for f in files if not (g.folder / f).is_file())
    if missing:
        raise ArtifactError(f"{g.model_file}: names external data {missing[0]!r}, which is not in {g.folder}")
    blocker = loop_blocker(g, [i.name for i in graph.input])
    kv_types = {str(tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in graph.input
                if i.name.startswith("past_key_values.")}
    if blocker is None and not kv_types <= set(OUR_KV_TYPES):
        blocker = f"KV cache of element type {', '.join(sorted(kv_types))}: our loop runs {', '.join(OUR_KV_TYPES)}"
    return {"genai_config": GENAI_CONFIG, "model_file": g.model_file.name, "max_length": g.max_length,
            "weight_files": {f: (g.folder / f).stat().st_size for f in sorted(files)},
            "our_loop": blocker is None or None, "our_loop_refused": blocker}
