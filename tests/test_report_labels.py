"""Report plot labels: clustered points (q4_k_m, onnx-int8, q8_0 a few MB and tok/s apart) get labels
whose boxes, as the renderer measures them, overlap neither each other nor the legend."""

from __future__ import annotations

import itertools

import pytest

from compress.harness.report import plots, quality_figure

# (label, runtime, perplexity ratio, MB, decode tok/s): seven points inside 3 MB / 3 tok/s and one far away
CLUSTER = [("reference", "pytorch", 1.000, 513.0, 21.0), ("q8_0", "llama.cpp", 1.004, 136.0, 60.0),
           ("q4_k_m", "llama.cpp", 1.006, 137.0, 61.0), ("onnx-int8", "onnxruntime", 1.005, 138.0, 59.0),
           ("int8", "pytorch", 1.006, 139.0, 58.0), ("q4_0", "llama.cpp", 1.003, 137.5, 60.5),
           ("onnx-int4", "onnxruntime", 1.004, 138.5, 60.2), ("int4-gptq", "pytorch", 1.005, 136.5, 59.5)]


def _rows():
    return [dict(label=a, runtime=rt, perplexity_ratio=q, file_mb=mb, decode_tok_s=tok) for a, rt, q, mb, tok in CLUSTER]


@pytest.mark.parametrize("name", ["quality_vs_size", "quality_vs_decode"])
def test_labels_of_clustered_points_do_not_overlap_each_other_or_the_legend(name):
    import matplotlib.pyplot as plt

    fig, labels = quality_figure(_rows(), name)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert len(boxes) == len(CLUSTER)
        clashes = [(labels[a].get_text(), labels[b].get_text())
                   for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]
        assert clashes == []
        legend = ax.get_legend().get_window_extent(renderer)
        assert not any(b.overlaps(legend) for b in boxes)
        frame = ax.get_window_extent(renderer)
        assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)  # nothing clipped
    finally:
        plt.close(fig)


def test_plots_write_both_pngs_for_the_clustered_rows(tmp_path):
    made = plots(_rows(), tmp_path)
    assert set(made) == {"quality_vs_size", "quality_vs_decode"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in made.values())
