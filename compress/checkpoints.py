"""Cheap checks on model files before any weights load: safetensors and GGUF integrity, and what a
Hugging Face folder holds. Each failure names the file and is a :class:`ModelLoadError`."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

from .errors import ModelLoadError
from .jsonfile import read_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def safetensors_header(path: Path, error: type[Exception] = ModelLoadError) -> tuple[dict[str, dict], int]:
    """The one reader of a safetensors header, torch-free: ``{tensor: {"dtype", "shape", "data_offsets"}}``
    without ``__metadata__``, and the byte where the data starts. Raises ``error`` naming the file when
    the header is corrupt or a tensor's data lies past the end of the file (a truncated copy).

        header, data_start = safetensors_header(Path("model.safetensors"))
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise error(f"{path}: truncated safetensors ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise error(f"{path}: truncated safetensors ({size} bytes, header alone needs {n + 8})")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise error(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: corrupt safetensors header (not a mapping)")
    header.pop("__metadata__", None)
    for name, info in header.items():
        try:
            info["shape"] = [int(d) for d in info["shape"]]
            begin, end = info["data_offsets"] = [int(x) for x in info["data_offsets"]]
            info["dtype"] = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise error(f"{path}: corrupt safetensors entry for tensor {name}") from None
        if 8 + n + end > size:
            raise error(f"{path}: truncated safetensors: tensor {name} ends at byte {8 + n + end} of {size}")
    return header, 8 + n


def check_safetensors(path: Path) -> None:
    """Header parses and every tensor's data lies inside the file (a truncated copy fails here)."""
    safetensors_header(path)


def check_gguf(path: Path) -> None:
    """The GGUF header parses and every tensor's data lies inside the file."""
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError/IndexError/struct.error on short or bad files
        raise ModelLoadError(f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {e})") from None
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadError(f"{path}: truncated GGUF (tensor {t.name} ends past the file's {size} bytes)")
    check_gguf_strings(reader, path)


def check_gguf_strings(reader, path: Path) -> None:
    """Every metadata string is UTF-8: llama.cpp (through llama-cpp-python) drops *all* metadata when one
    is not, and the model then chats without its template, through a plain transcript, exit 0."""
    from gguf import GGUFValueType

    for name, field in reader.fields.items():
        if GGUFValueType.STRING not in field.types:
            continue
        for i, idx in enumerate(field.data):
            raw = bytes(field.parts[idx])
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"{name}[{i}]" if field.types[0] == GGUFValueType.ARRAY else name
                raise ModelLoadError(f"{path}: metadata {where!r} is not UTF-8 (byte {raw[e.start]:#04x} at "
                                     f"{e.start}); llama.cpp would drop all metadata, chat template "
                                     "included") from None


@dataclasses.dataclass(frozen=True)
class HFFolder:
    path: Path
    config: dict
    weights: tuple[Path, ...]
    pickle: bool


def inspect_hf_folder(path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> HFFolder:
    """What a local Hugging Face folder holds, refusing what we must not or cannot load."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{path}: folder has no config.json (not a Hugging Face model folder)")
    config = read_json(cfg_path, ModelLoadError)
    check_causal_lm(config, cfg_path)
    from .families import check_model_files

    check_model_files(path, config)  # family, rope type, tokenizer kind: refused before any weight is read
    check_dimensions(config, cfg_path)
    if config.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(f"{cfg_path}: the model asks to run its own code (auto_map); "
                             "pass --trust-remote-code only if you trust its source")
    safetensors = tuple(sorted(path.glob("*.safetensors")))
    for f in safetensors:
        check_safetensors(f)
    if safetensors:
        return HFFolder(path, config, safetensors, False)
    pickles = tuple(sorted(f for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file()))
    if not pickles:
        raise ModelLoadError(f"{path}: no weights (*.safetensors) in the folder")
    if not allow_pickle:
        raise ModelLoadError(f"{path}: only pickle checkpoints ({pickles[0].name}), which can run code when "
                             "loaded; convert to safetensors, or pass --allow-pickle if you trust the source")
    return HFFolder(path, config, pickles, True)


# sizes every decoder needs to be positive integers; transformers builds a 0-layer model and prints a
# 15-line load report instead of naming the field
_POSITIVE = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size", "intermediate_size",
             "num_key_value_heads")


def check_dimensions(config: dict, where: Path | str) -> None:
    sections = [config] + [v for k, v in config.items() if k == "text_config" and isinstance(v, dict)]
    for section in sections:
        for key in _POSITIVE:
            if key in section and section[key] is not None:
                v = section[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ModelLoadError(f"{where}: {key} is {v!r}; a model needs a positive whole number")


def blame_json(folder: Path) -> None:
    """After a tokenizer or model failed to load: name the JSON file that is broken (a truncated
    tokenizer.json made tokenizers say only 'EOF while parsing'), if one is."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "config.json"):
        f = folder / name
        if f.is_file():
            read_json(f, ModelLoadError, problem="not valid JSON, truncated or corrupt")


def check_causal_lm(config: dict, where: Path | str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if archs:
        ok = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    else:
        ok = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not ok:
        raise ModelLoadError(f"{where}: {', '.join(archs) or model_type} is not a causal language model "
                             "(compress needs a decoder such as LlamaForCausalLM)")
