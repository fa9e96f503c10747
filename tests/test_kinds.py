"""Guard: every row of compress.kinds works end to end. Its references resolve to the code they name, its
config is the one registered under its stage, its runtimes are ones runtimes/ registers, and an artifact of
every model kind (tiny, built in-process by the real stage wherever one exists) loads in PyTorch through
the table, runs in every runtime its row names with the logits PyTorch gives, and exports to every format.

A new row without a way to make its artifact here (:data:`MAKERS`) fails
``test_every_model_kind_has_an_artifact_here``.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
from artifact_fixtures import train_on_ids

from compress.config import registered_configs
from compress.kinds import EXPORT_FORMATS, FOREIGN, KINDS, by_format, foreign_kind, kind, pytorch_loader, resolve
from compress.manifest import ArtifactWriter, read_manifest

# onnxruntime's GroupQueryAttention needs head_dim % 16 == 0: 6 heads of 16 (hidden 96, 2 KV heads)
SHAPE = {"num_attention_heads": 6, "num_key_value_heads": 2}
MODEL_KINDS = sorted(k.stage for k in KINDS.values() if k.is_model)


def test_every_reference_resolves_to_the_code_of_its_row():
    for k in KINDS.values():
        cls = k.config_class()
        assert cls.KIND == k.stage and registered_configs()[k.stage] is cls, k.stage
        cfg = cls() if k.stage != "distill" else cls(student="student")
        assert cls.from_dict(cfg.to_dict()) == cfg
        for ref in (k.make, k.loader, k.export_cli, k.dry_run):
            assert ref is None or callable(resolve(ref)), (k.stage, ref)
    assert pytorch_loader("quantize") is resolve(KINDS["quantize"].loader)
    assert pytorch_loader("prune") is None and pytorch_loader(None) is None


def test_every_config_a_file_may_name_is_a_row():
    """Every config class of the package (the test fixtures' aside) has its row, so a kind is never known
    to the config registry but missing from the table."""
    for k in KINDS.values():
        k.config_class()  # imports every module a row names
    ours = {name for name, cls in registered_configs().items()
            if cls.__module__.split(".")[0] in ("compress", "export")}
    assert ours == set(KINDS)


def test_runtimes_named_by_the_table_are_registered_and_formats_are_unique():
    from runtimes import known_runtimes

    assert {r.runtime for k in KINDS.values() for r in k.runs} <= set(known_runtimes())
    formats = [k.export_format for k in KINDS.values() if k.export_format]
    assert len(formats) == len(set(formats)) and set(EXPORT_FORMATS) == set(formats)
    assert all(KINDS[s].make and KINDS[s].export_cli for s in EXPORT_FORMATS.values())
    with pytest.raises(Exception, match="'ggfu' is not an export format .*did you mean 'gguf'"):
        by_format("ggfu")
    with pytest.raises(Exception, match="unknown stage kind 'quantise'"):
        kind("quantise")


def test_foreign_rows_name_registered_runtimes_an_inspect_function_and_no_stage_of_ours(tmp_path):
    """Folders other tools wrote (tests/test_bench_genai_folder.py benches the builder's): their rows resolve,
    and a folder with a manifest of ours is never taken for one."""
    from runtimes import known_runtimes

    names = [k.name for k in FOREIGN]
    assert len(set(names)) == len(names) and not set(names) & set(KINDS)
    assert len({k.marker for k in FOREIGN}) == len(FOREIGN)
    for k in FOREIGN:
        assert callable(resolve(k.inspect)) and k.made_by
        assert {r.runtime for r in k.runs} <= set(known_runtimes())
        (tmp_path / k.name).mkdir()
        assert foreign_kind(tmp_path / k.name) is None
        (tmp_path / k.name / k.marker).write_text("{}")
        assert foreign_kind(tmp_path / k.name) is k
    genai = FOREIGN[0]
    assert genai.runtime_paths(tmp_path, {}) == {"onnxruntime-genai": str(tmp_path)}
    assert list(genai.runtime_paths(tmp_path, {"our_loop": True})) == ["onnxruntime-genai", "onnxruntime"]


def test_a_runtime_that_needs_an_optional_file_applies_only_when_the_manifest_names_it(tmp_path):
    onnx = KINDS["export-onnx"]
    assert onnx.runtime_paths(tmp_path, {}) == {"onnxruntime": str(tmp_path)}
    assert list(onnx.runtime_paths(tmp_path, {"genai_config": "genai_config.json"})) == \
        ["onnxruntime", "onnxruntime-genai"]
    assert KINDS["export-gguf"].runtime_paths(tmp_path, {"gguf_file": "m.gguf"}) == \
        {"llama.cpp": str(tmp_path), "pytorch": str(tmp_path / "m.gguf")}


# ---- an artifact of every model kind --------------------------------------------------------------

@dataclasses.dataclass
class Zoo:
    root: Path

    @functools.cached_property
    def source(self) -> Path:
        """A tiny Llama that memorized the check ids: confident predictions, so every export's own
        validation applies its per-precision tolerances unchanged."""
        from compress.data import check_ids
        from compress.tiny import build_model, build_tokenizer

        tok = build_tokenizer(add_bos=False)
        return train_on_ids(build_model("llama", seed=0, **SHAPE), tok, self.root / "source", check_ids(tok, 128), 60)

    made: dict[str, Path] = dataclasses.field(default_factory=dict)

    def make(self, stage: str) -> Path:
        """The artifact of ``stage``, made once per module."""
        if stage not in self.made:
            self.made[stage] = MAKERS[stage](self, self.root / stage)
        return self.made[stage]


def _fetched(zoo: Zoo, out: Path) -> Path:
    """What ``fetch`` writes (a transformers folder under its manifest), without the bundled download."""
    from compress.fetch import FetchConfig

    with ArtifactWriter(out, stage="fetch", config=FetchConfig(), input_id="gguf:kinds-test") as art:
        for f in zoo.source.iterdir():
            shutil.copy2(f, art.path / f.name)
    return out


def _imported(zoo: Zoo, out: Path) -> Path:
    from compress.fetch import import_gguf
    from export.gguf import GGUFConfig, export_gguf

    return import_gguf(export_gguf(str(zoo.source), GGUFConfig(qtype="F32"), out / "f32"))


def _pruned(zoo: Zoo, out: Path) -> Path:
    from compress.prune import PruneConfig, prune

    return prune(str(zoo.source), PruneConfig(method="depth", layers=1, samples=8, seq_len=64, eval_tokens=0), out)


def _distilled(zoo: Zoo, out: Path) -> Path:
    from compress.distill import DistillConfig, distill

    cfg = DistillConfig(teacher=str(zoo.source), student=str(zoo.make("prune")), steps=2, seq_len=32, batch=2,
                        warmup=1, checkpoint_every=2, eval_every=2, eval_tokens=64)
    return distill(cfg, out)


def _quantized(zoo: Zoo, out: Path) -> Path:
    from compress.quantize import QuantConfig, run_quantize

    return run_quantize(str(zoo.source), QuantConfig(scheme="int8", eval_tokens=0), out)


def _exported(fmt: str):
    def make(zoo: Zoo, out: Path) -> Path:
        k = by_format(fmt)
        k.verb()(str(zoo.make("quantize")), k.config_class()(), out)
        return out

    return make


MAKERS = {"fetch": _fetched, "import-gguf": _imported, "prune": _pruned, "distill": _distilled,
          "quantize": _quantized, "export-gguf": _exported("gguf"), "export-onnx": _exported("onnx")}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("kinds"))


def test_every_model_kind_has_an_artifact_here():
    assert set(MAKERS) == set(MODEL_KINDS)


def _pytorch_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch

    from compress.models import load_model

    lm = load_model(str(folder), verify=False)
    with torch.inference_mode():
        return lm.model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


@pytest.mark.parametrize("stage", MODEL_KINDS)
def test_every_model_kind_loads_runs_in_its_runtimes_and_exports(stage, zoo, tmp_path, one_thread):
    from compress.data import check_ids
    from compress.harness.targets import resolve_target
    from compress.models import load_model
    from runtimes import DeviceProfile, get_runtime

    k = KINDS[stage]
    folder = zoo.make(stage)
    m = read_manifest(folder)
    assert m.stage == stage
    target = resolve_target(str(folder))  # what bench runs: the row's runtimes, native first
    assert target.loaders == k.runtime_paths(folder, m.report) and target.native == k.native
    if any(r.runtime == "pytorch" and r.file is None for r in k.runs):
        lm = load_model(str(folder), verify=False)  # through the row's loader (or transformers' own)
        assert lm.model_id == m.content_id
    # the logits every runtime gives are PyTorch's on the artifact (an export: on the artifact it carries)
    reference = folder if "pytorch" in target.loaders else Path(m.report["input"])
    ids = check_ids(load_model(str(reference), verify=False).tokenizer, 32)
    want = _pytorch_logits(reference, ids)
    for runtime, path in target.loaders.items():
        rt = get_runtime(runtime)
        rt.load(path, DeviceProfile(threads=1))
        got = np.asarray(rt.logits(ids), dtype=np.float32)
        assert got.shape == want.shape, runtime
        top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
        assert top1 >= 0.9 and np.abs(got - want).max() <= 0.05 * np.abs(want).max(), (runtime, top1)
    if k.export_format:
        return  # made by an export, checked above against what it carries
    for fmt in EXPORT_FORMATS:
        e = by_format(fmt)
        e.verb()(str(folder), e.config_class()(), tmp_path / fmt)  # validates itself against PyTorch
        assert read_manifest(tmp_path / fmt).stage == e.stage
