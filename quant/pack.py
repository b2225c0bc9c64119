"""Self-extracting, minified + compressed copy of train_gpt.py: fewer code bytes in the 16 MB.

    python -m quant.pack [train_gpt.py] [--auto] [--bundle seed_archs.py ...] [--out packed/train_gpt.py]

Minify = drop comments, docstrings and blank lines (the same bytes on any Python); the result is
compressed with lzma (stdlib, so it runs wherever Python does) and wrapped in a two-line stub that
decompresses and executes it. The packed file is what ships and what runs: it embeds its own source
in the log and counts its own size, exactly as the plain file does. --bundle carries a module the run
imports (seed_archs.py for ARCH=worker|pse|scan, ngram_mix.py for EVAL_PATHS=ngram|ttt_ngram, kernels.py for
FUSED_MLP, FP8_MLP or FUSED_XSA) inside the same file: its minified source fills train_gpt.py's BUNDLED table, from
which train_gpt.load_plugin imports it. --auto bundles what Hyperparameters.plugins names for the run the environment
configures (PRESET=record unless given; `make pack [KEY=VALUE ...]` passes its variables), from beside the source.
"""

from __future__ import annotations

import argparse
import ast
import base64
import io
import lzma
import os
import sys
import tokenize

STUB = 'import lzma,base64\nexec(compile(lzma.decompress(base64.b85decode({blob!r})),"train_gpt.py","exec"))\n'
BUNDLED = "BUNDLED: dict[str, str] = {}"  # the line of train_gpt.py that --bundle fills in


def _docstrings(src: str, lines: list[str]) -> tuple[set[int], dict[int, str]]:
    """Rows of docstrings that stand on their own lines, and a `pass` for bodies that were only one."""
    drop, repl = set(), {}
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        if not (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            continue
        d = body[0]
        if lines[d.lineno - 1][: d.col_offset].strip() or lines[d.end_lineno - 1][d.end_col_offset :].strip():
            continue  # shares a line with code: keep it
        drop.update(range(d.lineno, d.end_lineno + 1))
        if len(body) == 1:
            repl[d.lineno] = " " * d.col_offset + "pass"
    return drop, repl


def minify(src: str) -> str:
    """Drop comments, docstrings, blank lines and trailing blanks, keeping every other character as
    written: the result is the same on every Python that can read the source (ast.unparse is not: 3.12
    writes f-strings that 3.11 cannot parse)."""
    lines = src.splitlines()
    inside, starts, cut = set(), set(), {}  # rows inside / starting a multi-line token; comment columns
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.start[0] < tok.end[0]:
            starts.add(tok.start[0])
            inside.update(range(tok.start[0] + 1, tok.end[0] + 1))
        if tok.type == tokenize.COMMENT:
            cut[tok.start[0]] = tok.start[1]
    drop, repl = _docstrings(src, lines)
    out = []
    for row, line in enumerate(lines, 1):
        if row in repl or row in inside and row not in drop:
            out.append(repl.get(row, line))
        elif row not in drop:
            line = line[: cut.get(row, len(line))]
            line = line if row in starts else line.rstrip()
            if line.strip():
                out.append(line)
    return "\n".join(out) + "\n"


def pack(src: str, bundle: dict[str, str] | None = None) -> str:
    """The packed file of source `src`, carrying the modules `bundle` ({module name: source}) inside it."""
    code = minify(src)
    if bundle:
        if code.count(f"\n{BUNDLED}\n") != 1:
            raise SyntaxError(f"no line '{BUNDLED}' to carry {', '.join(bundle)} in")
        table = "BUNDLED = {" + ", ".join(f"{name!r}: {minify(text)!r}" for name, text in bundle.items()) + "}"
        code = code.replace(f"\n{BUNDLED}\n", f"\n{table}\n")
    blob = lzma.compress(code.encode(), preset=9 | lzma.PRESET_EXTREME)
    return STUB.format(blob=base64.b85encode(blob))


def unpack(text: str) -> str | None:
    """The minified source inside a packed file (None if `text` is not one): what tools read to see
    its imports. Files packed before minify kept the source text may only parse on the Python that
    packed them (3.12's ast.unparse nests f-string quotes)."""
    head, _, rest = text.partition("b85decode(")
    if head != STUB.split("b85decode(")[0] or not rest.startswith(("b'", 'b"')):
        return None
    try:
        blob = rest[2 : rest.index(rest[1], 2)]  # the b85 alphabet has no quotes
        return lzma.decompress(base64.b85decode(blob)).decode("utf-8")
    except (ValueError, lzma.LZMAError):  # b85 and UTF-8 decoding errors are ValueErrors
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quant.pack", description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default="train_gpt.py")
    ap.add_argument("--bundle", action="append", default=[], metavar="MODULE.py", help="a module the run imports")
    ap.add_argument("--auto", action="store_true", help="bundle what the run the environment configures imports")
    ap.add_argument("--out", default=os.path.join("packed", "train_gpt.py"))
    args = ap.parse_args(argv)
    try:
        with open(args.source, encoding="utf-8") as f:
            src = f.read()
        bundle, here = {}, os.path.dirname(args.source)
        if args.auto:  # the run's settings as train_gpt reads them (a bad value is its one-line ValueError)
            import train_gpt as tg

            h = tg.Hyperparameters({"PRESET": "record", **os.environ})
            args.bundle += [os.path.join(here, f"{name}.py") for name in h.plugins()]
        for path in args.bundle:
            with open(path, encoding="utf-8") as f:
                bundle[os.path.splitext(os.path.basename(path))[0]] = f.read()
        packed = pack(src, bundle)
    except (OSError, SyntaxError, ValueError) as e:
        print(f"error: {args.source}: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(packed)
    carried = "".join(f" + {p}" for p in args.bundle)
    print(f"packed {args.source}{carried}: {len(src.encode())} -> {len(packed.encode())} bytes ({args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
