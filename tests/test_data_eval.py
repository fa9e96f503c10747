"""Window rules, perplexity/KL arithmetic and multiple-choice scoring, on tiny models and fakes."""

from __future__ import annotations

import collections
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compress.data import MCExample, MCTask, load_mc_task, load_text, text_windows, tokenize_text, uses_bos
from compress.errors import DataError
from compress.evaluate import EvalConfig, evaluate, mc_accuracy, score_windows
from compress.models import load_model
from runtimes import DeviceProfile, Generation, Runtime
from runtimes.torch_runtime import TorchRuntime

BOS = 1


# --- window rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("window, stride", [(8, 8), (8, 7), (8, 4), (8, 1), (16, 5)])
def test_with_bos_every_window_starts_with_bos_and_every_token_is_scored_once(window, stride):
    ids = list(range(100, 150))  # distinct ids: position is recoverable from the id
    windows = text_windows(ids, window=window, stride=stride, bos_id=BOS)
    assert all(w.input_ids[0] == BOS for w in windows)
    assert all(len(w.input_ids) <= window for w in windows)
    assert all(w.first_target >= 1 for w in windows)
    scored = collections.Counter(t for w in windows for t in w.input_ids[w.first_target:])
    assert scored == collections.Counter(ids)  # every text token exactly once, BOS never a target


@pytest.mark.parametrize("window, stride", [(8, 7), (8, 4), (8, 1), (16, 5)])
def test_without_bos_overlapping_windows_score_every_token_but_the_first_once(window, stride):
    ids = list(range(100, 150))
    windows = text_windows(ids, window=window, stride=stride, bos_id=None)
    assert all(BOS not in w.input_ids for w in windows)
    scored = collections.Counter(t for w in windows for t in w.input_ids[w.first_target:])
    assert scored == collections.Counter(ids[1:])  # the very first token has no context


def test_stride_smaller_than_window_overlaps_and_gives_context():
    ids = list(range(100, 140))
    windows = text_windows(ids, window=10, stride=4, bos_id=None)
    assert [w.input_ids[0] for w in windows] == [100 + 4 * k for k in range(9)]
    second = windows[1]
    assert second.input_ids[:6] == windows[0].input_ids[4:]  # shared context
    assert second.first_target == 6  # only tokens the first window did not reach are scored


def test_without_bos_non_overlapping_windows_skip_each_windows_first_token():
    ids = list(range(100, 130))
    windows = text_windows(ids, window=10, stride=10, bos_id=None)
    assert [w.input_ids for w in windows] == [ids[0:10], ids[10:20], ids[20:30]]
    assert [w.first_target for w in windows] == [1, 1, 1]


def test_stride_equal_to_window_with_bos_means_no_overlap():
    # The default config (window == stride == 512) must work for tokenizers that add BOS (Gemma).
    ids = list(range(100, 127))
    windows = text_windows(ids, window=10, stride=10, bos_id=BOS)
    assert [w.input_ids for w in windows] == [[BOS] + ids[0:9], [BOS] + ids[9:18], [BOS] + ids[18:27]]


def test_text_shorter_than_window_is_refused_with_its_name():
    with pytest.raises(DataError, match=r"notes\.txt: too short, 5 tokens"):
        text_windows([5, 6, 7, 8, 9], window=8, stride=8, bos_id=None, source="notes.txt")


def test_window_too_small_is_refused():
    with pytest.raises(DataError, match="window=2 is too small"):
        text_windows(list(range(10)), window=2, stride=1, bos_id=BOS)


def test_bundled_eval_and_calibration_texts_do_not_overlap():
    ev, cal = load_text("moby-dick").text, load_text("moby-dick-calib").text
    assert len(ev) > 100_000 and 3.5 * len(ev) < len(cal) < 4.5 * len(ev)
    assert ev[:2000] not in cal
    assert cal[-2000:] not in ev


def test_text_folder_is_read_sorted_and_empty_text_refused(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert load_text(tmp_path).text == "first\n\nsecond"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"empty\.txt: text is empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8"):
        load_text(tmp_path / "latin1.txt")


# --- perplexity and KL on the tiny model ----------------------------------------------------------

@pytest.fixture(scope="module")
def llama_rt(tiny_llama_dir):
    return TorchRuntime().use(load_model(tiny_llama_dir))


@pytest.fixture(scope="module")
def gemma_rt(tiny_gemma3_dir):
    return TorchRuntime().use(load_model(tiny_gemma3_dir))


def _manual_ppl(model, ids, first_target):
    """exp(mean NLL) of ids[first_target:] from one full forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    nll = -logp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return math.exp(float(nll[first_target - 1:].mean())), len(ids) - first_target


def test_score_windows_perplexity_equals_a_full_forward_pass(llama_rt):
    ids = tokenize_text(llama_rt.tokenizer, load_text("moby-dick").text, 300)
    assert len(ids) == 300  # more than one 128-position block inside score_windows
    windows = text_windows(ids, window=300, stride=300, bos_id=None)
    assert len(windows) == 1
    got = score_windows(llama_rt, windows)
    want, n = _manual_ppl(llama_rt.model, ids, 1)
    assert got["tokens"] == n == 299
    assert got["perplexity"] == pytest.approx(want, rel=1e-5)
    assert "kl" not in got


def test_score_windows_with_bos_scores_every_token_after_bos(gemma_rt):
    tok = gemma_rt.tokenizer
    assert uses_bos(tok)
    ids = tokenize_text(tok, load_text("moby-dick").text, 200)
    windows = text_windows(ids, window=201, stride=201, bos_id=tok.bos_token_id)
    assert len(windows) == 1 and windows[0].input_ids[0] == tok.bos_token_id
    got = score_windows(gemma_rt, windows)
    want, n = _manual_ppl(gemma_rt.model, [tok.bos_token_id] + ids, 1)
    assert got["tokens"] == n == 200
    assert got["perplexity"] == pytest.approx(want, rel=1e-5)


def test_score_windows_over_several_windows_averages_per_token(llama_rt):
    ids = tokenize_text(llama_rt.tokenizer, load_text("moby-dick").text, 200)
    windows = text_windows(ids, window=64, stride=32, bos_id=None)
    nll, n = 0.0, 0
    for w in windows:
        ppl, k = _manual_ppl(llama_rt.model, w.input_ids, w.first_target)
        nll += math.log(ppl) * k
        n += k
    got = score_windows(llama_rt, windows)
    assert got["tokens"] == n == 199
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_kl_is_zero_and_agreement_one_against_the_same_model(llama_rt, tiny_llama_dir):
    ids = tokenize_text(llama_rt.tokenizer, load_text("moby-dick").text, 256)
    windows = text_windows(ids, window=128, stride=128, bos_id=None)
    same = TorchRuntime().use(load_model(tiny_llama_dir))
    got = score_windows(llama_rt, windows, reference=same)
    assert got["kl"] == pytest.approx(0.0, abs=1e-7)
    assert got["top1_agreement"] == 1.0


def test_kl_is_positive_for_a_perturbed_copy(llama_rt, tiny_llama_dir):
    ids = tokenize_text(llama_rt.tokenizer, load_text("moby-dick").text, 256)
    windows = text_windows(ids, window=128, stride=128, bos_id=None)
    perturbed = load_model(tiny_llama_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        w = perturbed.model.lm_head.weight
        w.add_(torch.randn_like(w) * w.std() * 2)
    got = score_windows(TorchRuntime().use(perturbed), windows, reference=llama_rt)
    assert got["kl"] > 1e-3
    assert got["top1_agreement"] < 1.0
    base = score_windows(llama_rt, windows)
    assert got["perplexity"] != pytest.approx(base["perplexity"], rel=1e-3)


# --- multiple choice with a fake runtime ----------------------------------------------------------

class CharTokenizer:
    """One token per character (its code point), optionally with BOS first by default."""

    def __init__(self, add_bos: bool = False):
        self.add_bos = add_bos
        self.bos_token_id = BOS if add_bos else None

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) for c in text]
        if add_special_tokens and self.add_bos:
            ids = [BOS] + ids
        return SimpleNamespace(input_ids=ids)


class SuccessorRuntime:
    """A fake runtime that is almost sure the next token is the current one plus one ('a' -> 'b')."""

    name = "successor"
    vocab = 256

    def __init__(self):
        self.calls: list[list[int]] = []

    def load(self, artifact, profile: DeviceProfile, *, n_ctx=None, verify=True) -> None:
        pass

    def logits(self, token_ids, last=None):
        ids = list(token_ids)
        self.calls.append(ids)
        out = np.zeros((len(ids), self.vocab), dtype=np.float32)
        out[np.arange(len(ids)), (np.array(ids) + 1) % self.vocab] = 20.0
        return out[-last:] if last else out

    def generate(self, token_ids, max_new_tokens):
        new, last = [], list(token_ids)[-1]
        for _ in range(max_new_tokens):
            last = (last + 1) % self.vocab
            new.append(last)
        return Generation(list(token_ids), new, 0.0, 0.0)

    def version(self) -> str:
        return "0"

    def weight_bytes(self) -> float:
        return 0.0  # no weights: the next token is computed

    def kv_bytes_per_position(self) -> float:
        return 0.0


def test_fake_runtime_implements_the_runtime_protocol():
    rt = SuccessorRuntime()
    assert isinstance(rt, Runtime)
    assert rt.generate([ord("a")], 3).new_ids == [ord("b"), ord("c"), ord("d")]


def test_multiple_choice_picks_the_highest_summed_log_likelihood():
    task = MCTask("fake", (
        MCExample("Q: a", ("bcd", "xyz"), 0),            # "bcd" follows "a": right
        MCExample("Q: a", ("xyz", "bcd"), 1),            # right, gold second
        MCExample("Q: a", ("bcd", "xyz", "qrs"), 2),     # model picks "bcd": wrong
        MCExample("Q: a", ("bz", "bcdefghijkZZ"), 1),    # sum picks "bz" (one miss) over two misses
    ))                                                   # although the mean would pick the long one
    got = mc_accuracy(SuccessorRuntime(), CharTokenizer(), task)
    assert got == {"accuracy": 0.5, "n": 4, "chance": pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1 / 2) / 4)}


def test_multiple_choice_puts_bos_first_when_the_tokenizer_does():
    rt = SuccessorRuntime()
    task = MCTask("fake", (MCExample("Q: a", ("bcd", "xyz"), 0), MCExample("Q: a", ("xyz", "bcd"), 0)))
    got = mc_accuracy(rt, CharTokenizer(add_bos=True), task)
    assert got["accuracy"] == 0.5
    assert rt.calls and all(c[0] == BOS and c.count(BOS) == 1 for c in rt.calls)


def test_multiple_choice_limit_draws_a_fixed_sample():
    # Example i's prompt starts with chr(65 + i); gold alternates, and the model always picks "bcd".
    task = MCTask("fake", tuple(MCExample(f"{chr(65 + i)}: a", ("bcd", "xyz"), i % 2) for i in range(30)))
    a, b = SuccessorRuntime(), SuccessorRuntime()
    ra = mc_accuracy(a, CharTokenizer(), task, limit=7)
    rb = mc_accuracy(b, CharTokenizer(), task, limit=7)
    assert ra == rb and a.calls == b.calls
    drawn = [c[0] - 65 for c in a.calls[::2]]  # two calls (choices) per example
    assert ra["n"] == 7 and len(set(drawn)) == 7
    assert drawn != list(range(7))  # a sample, not the first seven
    assert ra["accuracy"] == sum(i % 2 == 0 for i in drawn) / 7


# --- BIG-bench task format ------------------------------------------------------------------------

def test_load_mc_task_builds_the_bigbench_prompt_format(tmp_path):
    task = {
        "name": "toy",
        "task_prefix": "Answer the question.",
        "examples": [
            {"input": "2+2?", "target_scores": {"4": 1, "5": 0, "22": 0}},
            {"input": "tie", "target_scores": {"a": 1, "b": 1}},        # ambiguous gold: skipped
            {"input": "free text", "target": "no choices"},             # not multiple choice: skipped
            {"input": "sky?", "target_scores": {"green": 0, "blue": 1}},
        ],
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    t = load_mc_task(tmp_path)  # a folder means its task.json
    assert t.name == "toy"
    assert t.examples == (
        MCExample("Answer the question.\nQ: 2+2?\n  choice: 4\n  choice: 5\n  choice: 22\nA: ", ("4", "5", "22"), 0),
        MCExample("Answer the question.\nQ: sky?\n  choice: green\n  choice: blue\nA: ", ("green", "blue"), 1),
    )


def test_load_mc_task_honours_custom_prefixes_without_appended_choices(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({
        "example_input_prefix": "\nIn: ", "example_output_prefix": " Out:", "append_choices_to_input": False,
        "examples": [{"input": "x", "target_scores": {"yes": 0, "no": 1}}]}))
    t = load_mc_task(path)
    assert t.name == "custom"
    assert t.examples == (MCExample("\nIn: x Out:", ("yes", "no"), 1),)


def test_bundled_sports_understanding_prompt():
    t = load_mc_task("sports_understanding")
    assert t.name == "sports_understanding"
    assert len(t.examples) > 900
    first = t.examples[0]
    assert first.prompt == ("Determine whether the following statement or statements are plausible or implausible:"
                            "\nStatement: Jamal Murray was perfect from the line\nPlausible/implausible? ")
    assert first.choices == ("plausible", "implausible") and first.correct == 0


def test_task_without_multiple_choice_examples_is_refused(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"examples": [{"input": "x", "target": "y"}]}))
    with pytest.raises(DataError, match="no multiple-choice examples"):
        load_mc_task(path)
    with pytest.raises(DataError, match="task not found"):
        load_mc_task("sports_understandin")


# --- end to end through evaluate() ----------------------------------------------------------------

def test_tiny_gemma3_evaluates_end_to_end_with_bos_windows(gemma_rt):
    cfg = EvalConfig(max_tokens=1100, tasks=("sports_understanding",), mc_limit=6)  # window == stride == 512
    result = evaluate(gemma_rt, gemma_rt.tokenizer, cfg)
    assert result.bos is True
    assert result.windows == 3
    assert result.tokens == 1100  # with BOS every text token is scored
    assert 1 < result.perplexity < 10 * 320  # random tiny model: near the vocabulary size
    assert result.mc["sports_understanding"]["n"] == 6
    assert result.mc["sports_understanding"]["chance"] == 0.5
    assert 0 <= result.mc["sports_understanding"]["accuracy"] <= 1


def test_tiny_llama_evaluates_with_reference(llama_rt, tiny_llama_dir):
    cfg = EvalConfig(max_tokens=600, window=256, stride=200, tasks=())
    result = evaluate(llama_rt, llama_rt.tokenizer, cfg, reference=llama_rt)
    assert result.bos is False
    assert result.tokens == 599
    assert result.kl == pytest.approx(0.0, abs=1e-7) and result.top1_agreement == 1.0
    assert result.mc == {}
