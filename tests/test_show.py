"""Tests of show.py: the token classes it paints must tell the truth about the run.

Dropping the rejected tokens from the classes must give back the decoder's output exactly, in
order, on a fixed seed; the accepted ones must be the ones block_stats counted; a draft equal to
the target at T = 0 must show only accepted and bonus tokens, a bad draft rejected + replacement
pairs, and a last block cut by max_new_tokens or a stop token only what the output kept. The
renderers must give every class its colour (and none with --no-color), escape HTML, and write
their files atomically; the command line must run end to end on tiny saved checkpoints.
"""

import copy
import os
import runpy
import sys

import pytest
import torch

import common
import data
import show
import speculative
import tokenizer
from checkpoints import save_model
from model import Llama, get_config
from test_speculative import perturbed_copy, plain_decode, random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = [1, 5, 9, 2, 7]


def decode(target, draft, max_new_tokens: int, gamma=4, temperature: float = 1.0, seed: int = 0, stop_ids=(),
           costs: dict | None = None):
    decoder = speculative.SpeculativeDecoder(target, draft, speculative.decoder_slots(
        target, draft, [PROMPT], max_new_tokens, 2 if gamma == "auto" else gamma))
    if costs:                                           # gamma 'auto' without timing anything
        decoder.costs[((temperature, None, None), "sample")] = costs
        decoder.cost_update = 0                         # and without the loop's timings moving them
    tokens, stats = decoder.generate(PROMPT, max_new_tokens, gamma, temperature, stop_ids=stop_ids,
                                     generator=torch.Generator().manual_seed(seed))
    return tokens.tolist(), stats


def output_of(classes) -> list[int]:
    return [token for row in classes for token, cls in row if cls != "rejected"]


def classes_of(classes) -> list[list[str]]:
    return [[cls for _, cls in row] for row in classes]


# ----------------------------------------------------------------------------------------------
# token_classes: by hand, then on real runs
# ----------------------------------------------------------------------------------------------

def test_token_classes_by_hand_including_cut_blocks():
    blocks = [([5, 6, 7], 1, 9), ([4, 4], 2, 8), ([], 0, 3)]      # a rejection, a full block, a plain step
    assert classes_of(show.token_classes(blocks, 6)) == [["accepted", "rejected", "replacement"],
                                                         ["accepted", "accepted", "bonus"], ["plain"]]
    assert output_of(show.token_classes(blocks, 6)) == [5, 9, 4, 4, 8, 3]
    assert show.token_classes(blocks, 1) == [[(5, "accepted")]]   # cut before the replacement: no rejected
    assert show.token_classes(blocks, 3) == [[(5, "accepted"), (6, "rejected"), (9, "replacement")],
                                             [(4, "accepted")]]
    assert show.running_tau(blocks) == [2.0, 2.5, 2.0]
    with pytest.raises(ValueError, match="fewer"):
        show.token_classes(blocks, 7)


def test_classes_reconstruct_the_output_on_a_fixed_seed():
    target = random_model(0)
    tokens, stats = decode(target, perturbed_copy(target, 0.5), 40)
    classes = show.token_classes(stats["blocks"], len(tokens))
    assert output_of(classes) == tokens and len(tokens) == 40
    flat = [cls for row in classes_of(classes) for cls in row]
    assert flat.count("accepted") == sum(stats["accepted_per_block"][: len(classes)])
    assert {"accepted", "rejected", "replacement", "bonus"} <= set(flat)     # this seed shows every kind
    taus = show.running_tau(stats["blocks"])
    assert taus[-1] == pytest.approx(stats["block_efficiency"])
    for row in classes:             # at T = 1 the residual max(0, p - q) is 0 where q > p: never the same token
        if row[-1][1] == "replacement":
            assert row[-2][1] == "rejected" and row[-2][0] != row[-1][0]


def test_a_draft_equal_to_the_target_is_always_accepted_and_a_cut_block_shows_only_what_was_kept():
    target = random_model(0)
    tokens, stats = decode(target, copy.deepcopy(target), 12, gamma=4, temperature=0)
    classes = show.token_classes(stats["blocks"], len(tokens))
    full = ["accepted"] * 4 + ["bonus"]
    assert classes_of(classes) == [full, full, ["accepted", "accepted"]]     # 12 = 5 + 5 + 2: the last one cut
    assert output_of(classes) == tokens


def test_a_bad_draft_gives_rejected_and_replacement_pairs():
    tokens, stats = decode(random_model(0), random_model(1), 20, gamma=3, temperature=0)
    classes = show.token_classes(stats["blocks"], len(tokens))
    assert output_of(classes) == tokens
    rejected = [row for row in classes_of(classes) if "rejected" in row]
    assert len(rejected) >= len(classes) // 2
    assert all(row[-2:] == ["rejected", "replacement"] and row.count("rejected") == 1 for row in rejected)


def test_a_stop_token_ends_the_picture():
    target = random_model(0)
    draft = perturbed_copy(target, 0.5)
    tokens, _ = decode(target, draft, 30, temperature=0)
    k = next(i for i in range(5, 30) if tokens[i] not in tokens[:i])          # a token first seen at position k
    cut, stats = decode(target, draft, 30, temperature=0, stop_ids={tokens[k]})
    assert cut == tokens[: k + 1]
    classes = show.token_classes(stats["blocks"], len(cut))
    assert output_of(classes) == cut and classes[-1][-1][0] == tokens[k] and classes[-1][-1][1] != "rejected"


def test_plain_steps_of_gamma_auto_are_the_targets():
    target = random_model(0)
    never_a_block = {"plain": 1.0, "block": {1: 100.0, 2: 100.0}}   # every block slower than a plain step
    tokens, stats = decode(target, random_model(1), 6, gamma="auto", costs=never_a_block)
    classes = show.token_classes(stats["blocks"], len(tokens))
    assert classes_of(classes) == [["plain"]] * 6 and output_of(classes) == tokens
    # and they are the target's own samples: plain decoding with the same seed writes the same
    assert tokens == plain_decode(target, PROMPT, 6, 1.0, generator=torch.Generator().manual_seed(0)).tolist()


# ----------------------------------------------------------------------------------------------
# Text and rendering
# ----------------------------------------------------------------------------------------------

BLOCKS = [([5, 6, 7], 1, 9), ([4, 4], 2, 8), ([], 0, 3)]      # every class once


class AngleTokenizer:
    """Token i reads "<i&": text that HTML must escape."""
    stop_ids = {3}

    @staticmethod
    def decode(ids):
        return "".join(f"<{i}&" for i in ids if i != 3)          # 3 is a control token: no text


def test_token_texts_decode_incrementally():
    classes = show.token_classes(BLOCKS, 6)
    texts = show.token_texts(AngleTokenizer.decode, classes, AngleTokenizer.stop_ids)
    assert texts == [["<5&", "<6&", "<9&"], ["<4&", "<4&", "<8&"], ["<end>"]]
    # A two-byte character split over two tokens belongs to the token that completes it; a
    # rejected token is decoded after its prefix (here it would have left the first byte a
    # broken character, U+FFFD) and leaves the output alone.
    pieces = {1: b"a", 2: "\u00e9".encode()[:1], 4: "\u00e9".encode()[1:], 6: b" b"}
    by_bytes = lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")   # noqa: E731
    classes = show.token_classes([([1, 2, 6], 2, 4)], 3)
    assert show.token_texts(by_bytes, classes) == [["a", "<2>", "\ufffd b", "\u00e9"]]


def test_terminal_output_colours_every_class_and_no_color_none():
    classes = show.token_classes(BLOCKS, 6)
    texts = show.token_texts(AngleTokenizer.decode, classes, AngleTokenizer.stop_ids)
    coloured = show.render_terminal(classes, texts, BLOCKS, color=True)
    assert all(code in coloured for code in show.ANSI.values())
    plain = show.render_terminal(classes, texts, BLOCKS, color=False)
    assert "\033" not in plain and "[x:<6&]" in plain and "[r:<9&]" in plain and "[b:<8&]" in plain
    assert show.visible("a\nb\x1b") == "a↵b·" and show.visible("  ") == "␣␣"


def test_html_has_every_class_and_escapes_the_text():
    classes = show.token_classes(BLOCKS, 6)
    texts = show.token_texts(AngleTokenizer.decode, classes, AngleTokenizer.stop_ids)
    page = show.render_html(classes, texts, BLOCKS, "a <title>", "a prompt & more", "summary")
    for cls in show.CLASSES:
        assert f'<span class="{cls}">' in page and f".{cls}{{" in page
    assert "&lt;5&amp;" in page and "<5&" not in page and "a &lt;title&gt;" in page and "prompt &amp; more" in page
    assert "running tau 2.50" in page


# ----------------------------------------------------------------------------------------------
# The command line, end to end on tiny saved checkpoints
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, str]:
    """A SentencePiece tokenizer trained on the tiny world and two saved random 320-token models."""
    root = tmp_path_factory.mktemp("show")
    world = data.make_world(data.preset("tiny"))
    texts = world["corpus"] + [r["prompt"] + "\n" + r["response"] for r in world["instructions"]]
    paths = {"tok": str(root / "tok.model"), "target": str(root / "target"), "draft": str(root / "draft"),
             "root": str(root)}
    tokenizer.train_sentencepiece(texts, paths["tok"], vocab_size=320)
    for seed, name in enumerate(("target", "draft")):
        torch.manual_seed(seed)
        save_model(Llama(get_config("test", vocab_size=320, max_seq_len=128)), paths[name])
    return paths


def cli(pair, *extra) -> list[str]:
    return ["--target", pair["target"], "--draft", pair["draft"], "--tokenizer", pair["tok"], "--device", "cpu",
            "--prompt", "Tell me about Mira & the <lantern>.", "--chat", "--max-new-tokens", "12", *extra]


def test_the_command_line_prints_colours_and_writes_html_and_png_atomically(pair, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    written = []
    real_write, real_replace = show.write_atomically, show.replace_atomically
    monkeypatch.setattr(show, "write_atomically", lambda path, text: (written.append(path), real_write(path, text)))
    monkeypatch.setattr(show, "replace_atomically", lambda path, w: (written.append(path), real_replace(path, w)))
    html_path, png_path = os.path.join(pair["root"], "show.html"), os.path.join(pair["root"], "show.png")
    show.main(cli(pair, "--gamma", "3", "--temperature", "1", "--seed", "0", "--html", html_path, "--png", png_path))
    out = capsys.readouterr().out
    assert "\033[32m" in out and "12 tokens" in out and "tau" in out and "alpha" in out
    assert written == [html_path, png_path]
    page = open(html_path, encoding="utf-8").read()
    assert "&amp; the &lt;lantern&gt;" in page and 'class="block"' in page
    assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(pair["root"]) if name.endswith(".tmp")]


def test_gamma_auto_without_colour(pair, capsys):
    show.main(cli(pair, "--gamma", "auto", "--max-gamma", "2", "--no-color", "--temperature", "0"))
    out = capsys.readouterr().out
    assert "\033" not in out and "gamma used:" in out


def test_help_and_bad_input(pair, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["show.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(ROOT, "show.py"), run_name="__main__")   # the script's own __main__ block
    assert exit_info.value.code == 0 and "--html" in capsys.readouterr().out
    for extra, message in ((["--gamma", "0"], "--gamma"), (["--html", pair["root"]], "--html")):
        with pytest.raises(SystemExit) as exit_info:
            common.run_cli(show.main, cli(pair, *extra))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
