"""compress report: Markdown, self-contained HTML referencing its plots, PNGs, JSONL; the Pareto front."""

from __future__ import annotations

import json

from compress.harness import write_report
from compress.harness.tables import pareto
from compress.manifest import read_manifest
from test_bench import latency_run


def test_report_files_exist_and_the_html_references_its_plots():
    run = latency_run()
    paths = write_report(run)
    assert {"markdown", "html", "rows", "quality_vs_size", "quality_vs_decode"} <= set(paths)
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0 and p.parent == run / "report"
    for name in ("quality_vs_size", "quality_vs_decode"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 2  # self-contained
    assert "href='quality_vs_size.png'" in html and "href='quality_vs_decode.png'" in html
    md = paths["markdown"].read_text()
    assert "![quality_vs_size](quality_vs_size.png)" in md and "| q8_0 | llama.cpp" in md
    assert "of roofline" in md and "Budgets of profile 'laptop'" in md
    rows = [json.loads(line) for line in paths["rows"].read_text().splitlines()]
    assert {r["runtime"] for r in rows} == {"pytorch", "llama.cpp", "onnxruntime"}
    read_manifest(run)  # the report sits beside the run without breaking its manifest


def test_report_cli_lists_what_it_wrote(run_cli):
    rc, out, err = run_cli("report", latency_run())
    assert rc == 0 and "report.html" in out


def test_report_of_a_non_run_is_one_line_exit_2(run_cli, tmp_path):
    rc, out, err = run_cli("report", tmp_path)
    assert rc == 2 and "no manifest.json" in err


def test_pareto_front_keeps_only_undominated_points():
    # (size, ppl ratio): small+good wins; the big bad one is dominated; lower x better
    xs, ys = [100, 50, 200, 60], [1.00, 1.10, 1.20, 1.05]
    assert pareto(xs, ys, higher_x_better=False) == {0, 1, 3}
    # (decode tok/s, ppl ratio): higher x better
    assert pareto([10, 50, 40], [1.0, 1.1, 1.2], higher_x_better=True) == {0, 1}


def test_front_table_names_what_dominates_a_file_on_size_and_each_quality_measure():
    from compress.harness.tables import front_table

    def row(label, runtime, mb, ppl, kl):
        return {"label": label, "runtime": runtime, "file_mb": mb, "perplexity_ratio": ppl, "kl": kl}

    rows = [row("ours-gguf", "llama.cpp", 90.0, 1.017, 0.033), row("ours-onnx", "onnxruntime", 91.0, 1.05, 0.079),
            row("Q4_K_M", "llama.cpp", 100.6, 1.011, 0.036), row("Q4_0", "llama.cpp", 87.5, 1.238, 0.303)]
    cols, body = front_table(rows)
    got = {line[0]: (line[5], line[6]) for line in body}
    assert got["ours-gguf"] == ("yes", "yes") and got["Q4_0"] == ("yes", "yes")
    assert got["Q4_K_M"] == ("yes", "no: ours-gguf (llama.cpp) is 90.0 MB at 0.0330")  # better ppl, worse KL
    assert got["ours-onnx"][1] == "no: ours-gguf (llama.cpp) is 90.0 MB at 0.0330"
    assert all("_front" not in r for r in rows)  # the rows are left as they were
    assert front_table(rows[:1]) is None
