"""
show.py: watch speculative decoding work, one block at a time.

Tau says how many tokens a target call makes on average; this shows where they come from. One
prompt is decoded speculatively (the flags are speculative.py's) and every token of the answer
is coloured by who made it:

  accepted     a draft token the rejection rule kept                        green
  rejected     the draft token where the block stopped (not in the output)  red, struck through
  replacement  the target's token sampled in its place (PAPER.md 4.1)       blue
  bonus        the target's extra token after a block accepted in full      purple
  plain        a step of the target alone (gamma 'auto' chose no block)     amber

so every block reads "green green ... red blue" or "green ... purple": its accepted prefix and
the one token the target always adds. A good draft paints long green runs; a bad one a red and a
blue after almost every token, one token per target call (tau near 1). Each block is marked with
its gamma and the running tau = tokens so far / target calls so far (the last one is the run's
tau). The terminal gets ANSI colours (or bracket marks with --no-color), --html a self-contained
page, --png a picture of the same text (README's).

  python show.py --target T --draft D --tokenizer TOK --prompt "Tell me about Mira." --chat \\
      --gamma 4 --temperature 1 --seed 0 --html show.html --png show.png
"""

import html
import os
import textwrap

import torch

import speculative
from common import check_output, replace_atomically, run_cli, write_atomically

CLASSES = ("accepted", "rejected", "replacement", "bonus", "plain")
LEGEND = {"accepted": "accepted draft token", "rejected": "rejected draft token",
          "replacement": "target's replacement", "bonus": "target's bonus token", "plain": "target alone"}
COLOURS = {"accepted": ("#1a7f37", "#d3f2d9"), "rejected": ("#cf222e", "#ffd8d5"),   # (text, background)
           "replacement": ("#0550ae", "#d4e4ff"), "bonus": ("#6639ba", "#e8dcff"), "plain": ("#7d4e00", "#fff0bd")}
ANSI = {"accepted": "\033[32m", "rejected": "\033[9;31m", "replacement": "\033[1;34m",   # 9: struck through
        "bonus": "\033[1;35m", "plain": "\033[33m"}
DIM, RESET = "\033[2m", "\033[0m"
MARKS = {"accepted": "{}", "rejected": "[x:{}]", "replacement": "[r:{}]", "bonus": "[b:{}]", "plain": "[p:{}]"}


def token_classes(blocks: list[tuple], n_output_tokens: int) -> list[list[tuple[int, str]]]:
    """Per block, the (token id, class) pairs it shows, from stats["blocks"]' (drafted,
    n_accepted, next_token). Dropping the "rejected" ones leaves exactly the output: its first
    n_output_tokens tokens, so a last block cut by a stop token or max_new_tokens shows only
    what the output kept (and its rejected token only if its replacement was kept)."""
    shown, left = [], n_output_tokens
    for drafted, n_accepted, next_token in blocks:
        if left == 0:
            break
        row = [(token, "accepted") for token in drafted[:n_accepted]][:left]
        left -= len(row)
        if left > 0:
            if not drafted:                               # gamma 0: the target stepped alone
                row.append((next_token, "plain"))
            elif n_accepted < len(drafted):               # the rule stopped at drafted[n_accepted]
                row += [(drafted[n_accepted], "rejected"), (next_token, "replacement")]
            else:                                         # all kept: the target's pass gave one more
                row.append((next_token, "bonus"))
            left -= 1
        shown.append(row)
    if left:
        raise ValueError(f"the blocks hold {n_output_tokens - left} tokens, fewer than the output's {n_output_tokens}")
    return shown


def running_tau(blocks: list[tuple]) -> list[float]:
    """After each block: (tokens made so far) / (target calls so far). Each block counts its
    n_accepted + 1 tokens, also past a stop or the token limit, so the last value is the run's
    block_efficiency tau (speculative.block_stats)."""
    made = 0
    taus = []
    for calls, (_, n_accepted, _) in enumerate(blocks, 1):
        made += n_accepted + 1
        taus.append(made / calls)
    return taus


def token_texts(decode, classes: list[list[tuple[int, str]]], stop_ids=()) -> list[list[str]]:
    """The text of every shown token, decoded incrementally: text(output so far + token) minus
    text(output so far). Decoding a token alone would lose SentencePiece's leading space and cut
    byte-level BPE's multi-byte characters; here a character split over several tokens belongs
    to the token that completes it (the incomplete tail, decoded as U+FFFD, is held back). A
    rejected token is decoded after the prefix it was proposed at, and never joins the output."""
    texts, output, before = [], [], ""
    for row in classes:
        texts.append([])
        for token, cls in row:
            text = decode(output + [token]).rstrip("\ufffd")
            piece = text[len(os.path.commonprefix([text, before])):]
            if not piece:                                  # a stop token, or part of a character
                piece = "<end>" if token in stop_ids else f"<{token}>"
            texts[-1].append(piece)
            if cls != "rejected":
                output.append(token)
                before = text
    return texts


def visible(text: str) -> str:
    """A token as one visible run of characters: newlines and tabs as arrows, other control
    characters (an ESC would drive the terminal) as dots, a token of spaces as open boxes."""
    if text and not text.strip(" "):
        return "␣" * len(text)
    return "".join({"\n": "↵", "\t": "→"}.get(c, "·" if ord(c) < 32 or ord(c) == 127 else c) for c in text)


def render_terminal(classes, texts, blocks, color: bool = True) -> str:
    """One line per block: its number, gamma, the running tau, then its tokens."""
    paint = (lambda cls, t: f"{ANSI[cls]}{t}{RESET}") if color else (lambda cls, t: MARKS[cls].format(t))
    legend = "  ".join(paint(cls, LEGEND[cls]) for cls in CLASSES)
    lines = [legend, f"{'block':>5} {'gamma':>5} {'tau':>5}"]
    bar = f"{DIM}│{RESET}" if color else "|"
    for i, (row, words, tau) in enumerate(zip(classes, texts, running_tau(blocks))):
        gamma = len(blocks[i][0])
        tokens = "".join(paint(cls, visible(word)) for (_, cls), word in zip(row, words))
        lines.append(f"{i + 1:>5} {gamma:>5} {tau:>5.2f} {bar} {tokens}")
    return "\n".join(lines)


def render_html(classes, texts, blocks, title: str, prompt: str = "", summary: str = "") -> str:
    """A self-contained page: the answer as flowing text, each block a span after a thin bar,
    its gamma and the running tau in a small label after it and in its tooltip."""
    style = "".join(f".{cls}{{color:{fg};background:{bg}}}" for cls, (fg, bg) in COLOURS.items())
    legend = " ".join(f'<span class="{cls}">{LEGEND[cls]}</span>' for cls in CLASSES)
    spans = []
    for i, (row, words, tau) in enumerate(zip(classes, texts, running_tau(blocks))):
        drafted, n_accepted, _ = blocks[i]
        tip = f"block {i + 1}: gamma {len(drafted)}, {n_accepted} accepted, running tau {tau:.2f}"
        tokens = "".join(f'<span class="{cls}">{html.escape(word)}</span>' for (_, cls), word in zip(row, words))
        spans.append(f'<span class="block" title="{tip}">{tokens}<sub>γ{len(drafted)} τ{tau:.2f}</sub></span>')
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>'
            "body{font-family:system-ui,sans-serif;max-width:56em;margin:2em auto;padding:0 1em}"
            ".text{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:2.1}"
            ".block{border-left:2px solid #aaa;margin-left:2px}.block sub{color:#888;font-size:60%}"
            f".rejected{{text-decoration:line-through}}.prompt{{color:#777}}{style}</style></head><body>\n"
            f"<h3>{html.escape(title)}</h3>\n<p>{legend}</p>\n<p class=\"prompt\">{html.escape(prompt)}</p>\n"
            f'<div class="text">{"".join(spans)}</div>\n<p>{html.escape(summary)}</p>\n</body></html>\n')


def render_png(path: str, classes, texts, blocks, title: str, prompt: str = "", width: int = 900) -> None:
    """The same picture with matplotlib, for README: the coloured tokens in a monospaced font
    wrapped to `width` pixels (at 100 dpi; saved at 200 for sharp text), a thin bar between
    blocks with the running tau under it, and above them the title, a legend of the classes
    that occur and the first two lines of the prompt, in grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import Rectangle
    mono, dpi = "DejaVu Sans Mono", 200
    fig = plt.figure(figsize=(width / 100, 1), dpi=dpi)
    renderer = fig.canvas.get_renderer()
    # Layout is in pixels at 100 dpi. A character's advance is measured at the dpi the file is
    # saved at: the font's hinting rounds it to whole pixels there.
    measure = lambda size: renderer.get_text_width_height_descent(                      # noqa: E731
        "M" * 40, FontProperties(family=mono, size=size), ismath=False)[0] / 40 / (dpi / 100)
    char = {size: measure(size) for size in (6, 9, 10, 11)}      # pixels per character, per font size
    margin, line_h, gap = 20, 30, 3
    draw, y = [], margin                         # what to draw: (kind, x, y, ...), in pixels from the top left
    for line in textwrap.wrap(title, int((width - 2 * margin) / char[10])):
        draw.append(("text", margin, y, line, "black", 10, "bold"))
        y += 18
    x, y = margin, y + 6
    present = {cls for row in classes for _, cls in row}
    for cls in (c for c in CLASSES if c != "plain" or c in present):    # plain only where gamma 'auto' used it
        draw.append(("chip", x, y, LEGEND[cls], cls, 9))
        x += (len(LEGEND[cls]) + 2) * char[9]
    y += 26
    for line in textwrap.wrap(" ".join(prompt.split()), int((width - 2 * margin) / char[10]))[:2]:
        draw.append(("text", margin, y, line, "#888888", 10, "normal"))
        y += 18
    x, y, label_ends = margin, y + 8, {}         # label_ends: per line, where its last label ends
    varied = len({len(drafted) for drafted, _, _ in blocks}) > 1
    for i, (row, words, tau) in enumerate(zip(classes, texts, running_tau(blocks))):
        for j, ((_, cls), word) in enumerate(zip(row, words)):
            word = visible(word)
            if x + len(word) * char[11] > width - margin and x > margin:    # wrap before a token, never inside
                x, y = margin, y + line_h
            if j == 0 and x > margin:            # a bar between blocks, not at the start of a line
                draw.append(("bar", x + gap / 2, y))
                x += gap
            draw.append(("chip", x, y, word, cls, 11))
            x += len(word) * char[11]
            end = (x, y)                         # the block's label goes under its last token
            if word.endswith("↵") and cls != "rejected":   # a newline of the output starts a new line
                x, y = margin, y + line_h
        label = f"γ{len(blocks[i][0])} τ{tau:.1f}" if varied else f"τ{tau:.1f}"
        if end[0] - len(label) * char[6] > label_ends.get(end[1], 0):     # only where it fits
            draw.append(("label", *end, label))
            label_ends[end[1]] = end[0]
    height = y + line_h + margin
    fig.set_size_inches(width / 100, height / 100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)                       # y grows downwards, like text
    ax.axis("off")
    for kind, x, y, *rest in draw:
        if kind == "text":
            text, colour, size, weight = rest
            ax.text(x, y, text, color=colour, family=mono, size=size, weight=weight, va="top")
        elif kind == "chip":                     # a token on its class's background
            text, cls, size = rest
            (fg, bg), w, h = COLOURS[cls], len(text) * char[size], size * 1.7
            ax.add_patch(Rectangle((x, y), w, h, facecolor=bg, edgecolor="none"))
            ax.text(x, y + h / 2, text, color=fg, family=mono, size=size, va="center_baseline")
            if cls == "rejected":                # struck through
                ax.plot([x, x + w], [y + h / 2, y + h / 2], color=fg, linewidth=1)
        elif kind == "bar":
            ax.plot([x, x], [y - 2, y + 21], color="#999999", linewidth=0.8)
        else:
            ax.text(x, y + 20, rest[0], color="#999999", family=mono, size=6, ha="right", va="top")
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    plt.close(fig)


def summary_line(stats: dict) -> str:
    """What the run counted (speculative.block_stats), in one line."""
    gammas = ", ".join(f"{g}" if g else "0 (plain)" for g in sorted(set(stats["drafted_per_block"])))
    return (f"{stats['new_tokens']} tokens, {stats['target_calls']} target calls: "
            f"tau {stats['block_efficiency']:.2f}, alpha {stats['acceptance_rate']:.3f}; gamma used: {gammas}")


def main(argv: list[str] | None = None) -> None:
    parser = speculative.decoding_arguments("Decode one prompt speculatively and show every block: the "
                                            "accepted and rejected draft tokens and the target's own, in colour.")
    parser.add_argument("--html", default=None, help="also write the blocks as a self-contained HTML page")
    parser.add_argument("--png", default=None, help="also write them as a PNG picture (matplotlib)")
    parser.add_argument("--no-color", action="store_true", help="bracket marks instead of colours ([x:...] rejected)")
    args = parser.parse_args(argv)
    for flag, out, example in (("--html", args.html, "show.html"), ("--png", args.png, "show.png")):
        if out is not None and os.path.isdir(out):      # before loading anything: one sentence, at once
            raise ValueError(f"{flag} {out} is a directory; give a file name inside it, such as {out}/{example}")
        if out is not None:
            check_output(out)
    loaded = speculative.load_for_decoding(args)
    tok, prompt, decoder, sampling, gamma = loaded.tok, loaded.prompt, loaded.decoder, loaded.sampling, loaded.gamma
    generator = torch.Generator(args.device).manual_seed(args.seed)
    tokens, stats = decoder.generate(prompt, args.max_new_tokens, gamma, *sampling, tok.stop_ids, generator,
                                     tok.pad_id, args.draft_mode)
    blocks = stats["blocks"]
    classes = token_classes(blocks, len(tokens))
    texts = token_texts(tok.decode, classes, tok.stop_ids)
    print(render_terminal(classes, texts, blocks, color=not args.no_color and "NO_COLOR" not in os.environ))
    print(summary_line(stats))
    def name(path: str) -> str:     # a checkpoint's file or directory; the run's for train.py's .../model
        path = os.path.normpath(path)
        return os.path.basename(os.path.dirname(path) if os.path.basename(path) == "model" else path)

    cut = "".join(f", {flag} {value:g}" for flag, value in (("top-k", args.top_k), ("top-p", args.top_p)) if value)
    title = (f"target {name(args.target)}, draft {name(args.draft)}: gamma {args.gamma}, T {args.temperature:g}{cut}, "
             f"{args.draft_mode} drafts, seed {args.seed}; tau {stats['block_efficiency']:.2f}")
    if args.html:
        write_atomically(args.html, render_html(classes, texts, blocks, title, args.prompt, summary_line(stats)))
    if args.png:
        render_png(args.png, classes, texts, blocks, title, args.prompt)


if __name__ == "__main__":
    run_cli(main)
