"""compress diagnose on a tiny model where one layer is quantized far worse than the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

BAD = "model.layers.1.mlp.down_proj"


def coarsen_layer(folder: Path, name: str) -> None:
    """Add 2-bit-sized noise (+-6 steps) to ``name``'s int4 integers: the one badly quantized layer."""
    from safetensors.numpy import load_file, save_file

    from compress.quantize.format import QuantizedWeight

    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    meta = json.loads((folder / "quantization.json").read_text())["layers"][name]
    qw = QuantizedWeight(name, 4, meta["group_size"], True, tuple(meta["shape"]), tensors[f"{name}.qweight"],
                         tensors[f"{name}.scales"], None)
    noise = np.random.default_rng(0).integers(-6, 7, size=qw.shape)
    q = np.clip(qw.integers().astype(np.int16) + noise, 0, 15)
    tensors[f"{name}.qweight"] = QuantizedWeight.from_integers(name, q, qw.scales, None, bits=4,
                                                               group_size=qw.group_size, symmetric=True).qweight
    save_file(tensors, str(f), metadata={"format": "pt"})


def one_bad_layer(root: Path) -> tuple[Path, Path]:
    """(reference folder, int4 RTN g32 artifact with BAD coarsened)."""
    from compress.quantize import QuantConfig, run_quantize
    from compress.tiny import save_tiny

    ref = save_tiny(root / "reference", "llama", seed=0, num_attention_heads=6, num_key_value_heads=2)
    good = run_quantize(str(ref), QuantConfig(scheme="int4-rtn", group_size=32, eval_tokens=0), root / "int4")
    bad = root / "int4-bad"
    shutil.copytree(good, bad)
    coarsen_layer(bad, BAD)
    return ref, bad


@pytest.fixture(scope="module")
def bad_artifact(tmp_path_factory):
    return one_bad_layer(tmp_path_factory.mktemp("diag"))


@pytest.fixture(scope="module")
def diagnosis(bad_artifact, tmp_path_factory):
    from compress.diagnose import DiagnoseConfig, diagnose

    out = tmp_path_factory.mktemp("fixed") / "fixed"
    return diagnose(bad_artifact[1], DiagnoseConfig(tokens=256, threads=1), apply_out=out)


def test_the_badly_quantized_layer_ranks_first_with_most_of_the_loss(diagnosis):
    att = diagnosis["attribution"]
    top = att["units"][0]
    assert top["label"] == BAD and top["kind"] == "tensor"
    assert top["share"] > 0.5, att["units"][:3]
    assert att["units"][1]["recovered"] < 0.3 * top["recovered"]
    assert "put back to the reference's weights" in att["measurement"]


def test_keep8_fix_is_predicted_and_apply_recovers_most_of_the_loss(diagnosis):
    k = diagnosis["fixes"]["keep8"]
    chosen = next(o for o in k["options"] if o["n"] == k["suggested"])
    assert BAD in chosen["tensors"] and chosen["extra_bytes"] > 0
    ap = diagnosis["applied"]
    before = diagnosis["attribution"]["kl"]
    assert ap["measured_kl_pytorch"] < 0.5 * before  # most of the loss recovered
    # the prediction is the fix measured with its int8 weights in place: the written artifact lands on it
    assert chosen["basis"] == "measured"
    assert ap["measured_kl_pytorch"] == pytest.approx(ap["predicted_kl"], rel=1e-3)


def test_suggestion_is_the_fewest_layers_whose_measured_fix_reaches_the_share(diagnosis):
    k = diagnosis["fixes"]["keep8"]
    before = diagnosis["attribution"]["kl"]
    share = diagnosis["config"]["target_share"]
    opts = {o["n"]: o for o in k["options"]}
    chosen = opts[k["suggested"]]
    assert before - chosen["predicted_kl"] >= share * before
    below = opts.get(k["suggested"] - 1)
    if below is not None:  # measured too, and short of the share
        assert below["basis"] == "measured" and before - below["predicted_kl"] < share * before
    assert chosen["additive_kl"] is not None  # the additive estimate is kept beside the measurement


def test_applied_artifact_changed_only_the_chosen_layers(diagnosis, bad_artifact):
    from compress.quantize.format import open_quantized

    fixed, orig = open_quantized(diagnosis["applied"]["out"]), open_quantized(bad_artifact[1])
    for name, meta in orig.layers.items():
        if name in diagnosis["applied"]["tensors"]:
            assert fixed.layers[name]["bits"] == 8
        else:
            assert fixed.layers[name] == meta
            assert np.array_equal(fixed.quantized(name).qweight, orig.quantized(name).qweight)


def test_report_writes_markdown_html_json_and_a_chart(diagnosis, tmp_path):
    from compress.diagnose import headline, write_diagnosis

    paths = write_diagnosis(diagnosis, tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert BAD in md and "predicted" in md and "layers.png" in md
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in paths["html"].read_text()
    assert json.loads(paths["json"].read_text())["attribution"]["units"][0]["label"] == BAD
    assert BAD in headline(diagnosis) and "quantizer" in headline(diagnosis)


def test_cli_json_and_apply_needs_out(bad_artifact, run_cli):
    rc, out, err = run_cli("diagnose", bad_artifact[1], "--tokens", "128", "--granularity", "block", "--json",
                           "--threads", "1")
    assert rc == 0, err
    res = json.loads(out)
    assert res["attribution"]["units"][0]["label"] == "block 1"
    rc, out, err = run_cli("diagnose", bad_artifact[1], "--apply")
    assert rc != 0 and "--out" in (out + err)
