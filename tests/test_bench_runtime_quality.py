"""benchmarks/bench_runtime_quality.py: its pure helpers (no model, no llama.cpp, no Shakespeare)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_runtime_quality.py"
_spec = importlib.util.spec_from_file_location("bench_runtime_quality", _PATH)
brq = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = brq  # dataclasses look their module up by name
_spec.loader.exec_module(brq)


def test_llama_quants_parse_with_and_without_imatrix():
    qs = brq.parse_llama_quants("Q8_0, Q4_K_M,Q4_K_M:noimatrix,,Q4_0")
    assert [(q.qtype, q.imatrix) for q in qs] == [("Q8_0", True), ("Q4_K_M", True), ("Q4_K_M", False),
                                                  ("Q4_0", True)]
    assert [q.label for q in qs] == ["llama.cpp Q8_0", "llama.cpp Q4_K_M", "llama.cpp Q4_K_M, no imatrix",
                                     "llama.cpp Q4_0"]
    assert brq.parse_llama_quants("") == []


@pytest.mark.parametrize("bad", ["Q4_K_M:imatrix", "q4_0", "Q4_K_MM", "F32"])
def test_llama_quants_refuse_unknown_names_and_options(bad):
    with pytest.raises(SystemExit):
        brq.parse_llama_quants(bad)


def test_bits_per_weight_is_file_bytes_over_float_parameters():
    assert brq.bits_per_weight(105_454_144, 134_515_008) == pytest.approx(6.2716, abs=1e-4)


def test_grid_notes_say_on_or_off_the_references_32_wide_grid():
    assert brq.grid_note("smollm2-135m", llama_cpp=True) == "on the reference's 32-wide grid (Q4_1)"
    assert brq.grid_note("gemma3-270m", group_size=32).startswith("on the reference's 32-wide grid (Q4_K_M)")
    assert brq.grid_note("smollm2-135m", group_size=64) == "off-grid (g64 spans 2 Q4_1 blocks)"
    assert brq.grid_note("smollm2-135m", per_channel=True) == "off-grid (per channel)"
    assert brq._grid_from_quant("smollm2-135m", {"scheme": "int4-gptq", "group_size": None}).startswith("off-grid (g128")
    assert "budget 5.5" in brq._grid_from_quant("smollm2-135m", {"scheme": "int4-gptq", "group_size": 32,
                                                                 "budget_bits": 5.5})


def test_fallbacks_are_read_from_llama_cpps_log():
    log = ("warning: blk.0.attn_k.weight                  - ncols    576 not divisible by 256 (required for type"
           "    q4_K) -> falling back to    q5_0\n"
           "warning: token_embd.weight - ncols    576 not divisible by 256 (required for type    q6_K) -> falling "
           "back to    q8_0\n"
           "llama_model_quantize_impl: WARNING: 2 of 272 tensor(s) required fallback quantization\n")
    fb = brq.parse_fallbacks(log)
    assert fb == [["blk.0.attn_k.weight", "Q4_K", "Q5_0"], ["token_embd.weight", "Q6_K", "Q8_0"]]
    assert brq.fallback_summary(fb) == "fell back (width not a multiple of 256): Q4_K->Q5_0 x1, Q6_K->Q8_0 x1"
    assert brq.fallback_summary([]) == ""


def test_markdown_table_has_one_row_per_result_and_the_pytorch_column():
    rows = [{"label": "reference fp32 (PyTorch)", "runtime": "pytorch", "grid": "float", "bpw": 32.0,
             "perplexity": 20.0, "kl": 0.0, "top1": 1.0},
            {"label": "ours", "runtime": "llama.cpp", "grid": "off-grid", "file_bytes": 100e6, "bpw": 5.9,
             "perplexity": 21.0, "kl": 0.05, "top1": 0.9, "torch_perplexity": 20.8, "notes": "Q4_0 x10"}]
    table = brq.markdown_table(rows, 20.0).splitlines()
    assert len(table) == 4 and table[0].count("|") == table[1].count("|") == table[3].count("|")
    assert "| 100.0 | 5.90 | 21.000 | 1.0500 | 0.0500 | 90.0% | 20.800 (1.0400) | Q4_0 x10 |" in table[3]
    assert "| - | 32.00 |" in table[2]


def test_text_names_resolve_without_the_shakespeare_package(tmp_path):
    assert brq.resolve_text("moby-dick") == ("moby-dick", "moby-dick")
    f = tmp_path / "held.txt"
    f.write_text("words")
    assert brq.resolve_text(str(f)) == ("held.txt", str(f))


def test_the_token_ids_key_changes_with_the_ids():
    assert brq.ids_key([[1, 2, 3]]) == brq.ids_key([[1, 2, 3]]) != brq.ids_key([[1, 2, 4]])
