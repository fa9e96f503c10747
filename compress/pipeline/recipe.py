"""A recipe file: the whole pipeline as one YAML, parsed into the same frozen configs the stage CLIs build.

    model: smollm2-135m
    work_dir: runs/default
    quantize:
      - {name: int4, scheme: int4-gptq, group_size: 32, samples: 16}
    export:
      - {name: q4km, format: gguf, from: model, qtype: Q4_K_M}
      - {name: onnx-int4, format: onnx, from: int4, precision: int4}
    bench:
      - {name: laptop, profile: laptop, new_tokens: 64}
    report: {}

Sections: ``prune`` and ``distill`` (one mapping each, optional), ``quantize`` / ``export`` / ``bench``
(lists of named entries), ``report`` and ``check`` (one mapping each). Every key of an entry is a field
of the stage's config (``compress quantize --save-config`` writes the same fields) or one of the few
keys that wire stages together (:data:`WIRING`); anything else is refused with the closest valid key.
Each stage writes ``work_dir/<section>-<name>``; names are plain file names, so no output can land
outside ``work_dir``. Relative paths are relative to the current directory, like every CLI argument.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ..config import StageConfig, read_yaml_file, suggest
from ..errors import ConfigError
from ..kinds import by_format, kind as stage_kind

TOP_KEYS = ("model", "work_dir", "prune", "distill", "quantize", "export", "bench", "report", "check")
# recipe-only keys per section: they wire stages together and are not config fields
WIRING: dict[str, tuple[str, ...]] = {
    "prune": ("name",), "distill": ("name",), "quantize": ("name",), "export": ("name", "format", "from"),
    "bench": ("name", "artifacts"), "report": ("name", "bench"), "check": ("name", "bench", "baseline"),
}
LIST_SECTIONS = ("quantize", "export", "bench")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclasses.dataclass
class Step:
    """One stage of the plan: its config, what it reads (keys of earlier steps, or ``model``) and its folder."""

    section: str
    name: str
    kind: str  # a stage of compress.kinds, or "report"
    config: StageConfig | None
    inputs: tuple[str, ...]
    out: Path
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.out.name

    @property
    def label(self) -> str:
        return f"{self.section} {self.name}"


@dataclasses.dataclass
class Recipe:
    path: Path
    model: str
    work_dir: Path
    steps: list[Step]

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and cross-check a recipe (names, wiring, configs); no file other than the recipe is read."""
    p = Path(path)
    data = read_yaml_file(p, "recipe file")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe is a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{p}: unknown key {key!r}{suggest(key, TOP_KEYS)}; valid keys: {', '.join(TOP_KEYS)}")
    for key in ("model", "work_dir"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{p}: {key!r} is required (a string)")
    work = Path(data["work_dir"]).expanduser().absolute()
    return Recipe(p, data["model"], work, _steps(p, data, work))


def _entries(p: Path, data: dict[str, Any], section: str) -> list[dict[str, Any]]:
    value = data.get(section)
    if value is None:
        return []
    if section in LIST_SECTIONS:
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{p}: {section} is a list of mappings, one per variant")
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{p}: {section} is one mapping of its settings ({{}} for the defaults)")
    return [value]


def _name(p: Path, section: str, i: int, entry: dict[str, Any], default: str | None) -> str:
    name = entry.get("name", default)
    where = f"{p}: {section}[{i}]"
    if name is None:
        raise ConfigError(f"{where}: 'name' is required (it names the output folder {section}-NAME)")
    if not isinstance(name, str):  # `name: 8` reads as an integer: "8 must be letters, digits" confused users
        raise ConfigError(f"{where}.name: {name!r} is YAML's {type(name).__name__}, not a string; quote it "
                          f"(name: \"{name}\")")
    if not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"{where}.name: {name!r} must be a plain folder name (letters, digits, '_', '-', '.'); "
                          "outputs stay inside work_dir")
    return name


def config_class(kind: str) -> type[StageConfig] | None:
    """The config class of a step's kind (None for ``report``, which has no settings)."""
    return None if kind == "report" else stage_kind(kind).config_class()


def _config(p: Path, section: str, i: int, name: str, kind: str, entry: dict[str, Any],
            filled: dict[str, Any] | None = None) -> StageConfig | None:
    cls = config_class(kind)
    wiring = WIRING[section]
    fields = {f.name for f in dataclasses.fields(cls)} if cls else set()
    where = f"{p}: {section}[{i}] ({name})"
    for key in entry:
        if key not in fields and key not in wiring and key != "type":
            valid = sorted(fields | set(wiring))
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, valid)}; valid keys: {', '.join(valid)}")
    if cls is None:
        return None
    body = {k: v for k, v in entry.items() if k not in wiring}
    body.update(filled or {})
    return cls.from_dict(body, where=where)


def _steps(p: Path, data: dict[str, Any], work: Path) -> list[Step]:
    steps: list[Step] = []
    base = "model"  # what quantize and `from: model` read: the pruned / distilled model when there is one

    def add(section: str, name: str, kind: str, cfg, inputs: tuple[str, ...], single: bool, **extra) -> Step:
        out = work / (section if single and name == section else f"{section}-{name}")
        if any(s.out == out for s in steps):
            raise ConfigError(f"{p}: two {section} entries are named {name!r}; names must be unique")
        step = Step(section, name, kind, cfg, inputs, out, extra)
        steps.append(step)
        return step

    for i, e in enumerate(_entries(p, data, "prune")):
        name = _name(p, "prune", i, e, "prune")
        base = add("prune", name, "prune", _config(p, "prune", i, name, "prune", e), ("model",), True).key
    for i, e in enumerate(_entries(p, data, "distill")):
        name = _name(p, "distill", i, e, "distill")
        # teacher and student are filled in by the runner with real paths; the recipe may not set them
        for key in ("teacher", "student"):
            if key in e:
                raise ConfigError(f"{p}: distill.{key} comes from the recipe (teacher = model, student = the "
                                  "pruned model); remove it")
        if base == "model":
            raise ConfigError(f"{p}: distill trains a smaller student: it needs a prune section before it")
        student = next(s for s in steps if s.key == base).out
        cfg = _config(p, "distill", i, name, "distill", e, {"teacher": data["model"], "student": str(student)})
        base = add("distill", name, "distill", cfg, (base,), True).key
    variants: dict[str, str] = {"model": base}
    for i, e in enumerate(_entries(p, data, "quantize")):
        name = _name(p, "quantize", i, e, None)
        if name == "model":
            raise ConfigError(f"{p}: quantize[{i}].name: 'model' is reserved for the unquantized model")
        variants[name] = add("quantize", name, "quantize", _config(p, "quantize", i, name, "quantize", e),
                             (base,), False).key
    exports: dict[str, str] = {}
    for i, e in enumerate(_entries(p, data, "export")):
        name = _name(p, "export", i, e, None)
        kind = by_format(e.get("format"), where=f"{p}: export[{i}] ({name}).format").stage
        src = e.get("from", "model")
        if src not in variants:
            raise ConfigError(f"{p}: export[{i}] ({name}).from: {src!r} is not a quantize variant"
                              f"{suggest(str(src), variants)}; choose one of: {', '.join(variants)}")
        exports[name] = add("export", name, kind, _config(p, "export", i, name, kind, e), (variants[src],),
                            False).key
    benches: dict[str, str] = {}
    for i, e in enumerate(_entries(p, data, "bench")):
        name = _name(p, "bench", i, e, None)
        wanted = e.get("artifacts", list(exports))
        if not isinstance(wanted, list) or not wanted:
            raise ConfigError(f"{p}: bench[{i}] ({name}).artifacts: a non-empty list of export names")
        for a in wanted:
            if a not in exports:
                raise ConfigError(f"{p}: bench[{i}] ({name}).artifacts: {a!r} is not an export"
                                  f"{suggest(str(a), exports)}; exports: {', '.join(exports) or 'none'}")
        # the reference is the recipe's model unless the entry names another: every export's losses are
        # measured against what the recipe started from
        filled = {} if "reference" in e else {"reference": data["model"]}
        benches[name] = add("bench", name, "bench", _config(p, "bench", i, name, "bench", e, filled),
                            tuple(exports[a] for a in wanted), False, labels=tuple(wanted)).key
    for section in ("report", "check"):
        for i, e in enumerate(_entries(p, data, section)):
            name = _name(p, section, i, e, section)
            which = e.get("bench", list(benches)[:1] if section == "check" else list(benches))
            which = [which] if isinstance(which, str) else which
            if not which:
                raise ConfigError(f"{p}: {section} needs a bench section to read")
            for b in which:
                if b not in benches:
                    raise ConfigError(f"{p}: {section}.bench: {b!r} is not a bench entry{suggest(str(b), benches)}; "
                                      f"benches: {', '.join(benches) or 'none'}")
            extra = {}
            if section == "check":
                if not isinstance(e.get("baseline"), str):
                    raise ConfigError(f"{p}: check.baseline: the path of the baseline file is required")
                if len(which) != 1:
                    raise ConfigError(f"{p}: check.bench: one bench entry is checked against one baseline")
                extra["baseline"] = Path(e["baseline"]).expanduser().absolute()
            cfg = _config(p, section, i, name, section, e)
            add(section, name, section, cfg, tuple(benches[b] for b in which), True, **extra)
    return steps
