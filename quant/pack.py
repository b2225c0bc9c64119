"""Self-extracting, minified + compressed copy of train_gpt.py: fewer code bytes in the 16 MB.

    python -m quant.pack [train_gpt.py] [--out packed/train_gpt.py]

Minify = parse and unparse (drops comments and formatting) and drop docstrings; the result is
compressed with lzma (stdlib, so it runs wherever Python does) and wrapped in a two-line stub that
decompresses and executes it. The packed file is what ships and what runs: it embeds its own source
in the log and counts its own size, exactly as the plain file does.
"""
from __future__ import annotations

import argparse
import ast
import base64
import lzma
import os
import sys

STUB = 'import lzma,base64\nexec(compile(lzma.decompress(base64.b85decode({blob!r})),"train_gpt.py","exec"))\n'


def minify(src: str) -> str:
    tree = ast.parse(src)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # a docstring is never needed at run time
    return ast.unparse(tree) + "\n"


def pack(src: str) -> str:
    blob = lzma.compress(minify(src).encode(), preset=9 | lzma.PRESET_EXTREME)
    return STUB.format(blob=base64.b85encode(blob))


def unpack(text: str) -> str | None:
    """The minified source inside a packed file (None if `text` is not one): what tools read to see
    its imports. It may only parse on the Python that packed it (3.12 unparses nested f-string quotes)."""
    head, _, rest = text.partition("b85decode(")
    if head != STUB.split("b85decode(")[0] or not rest.startswith(("b'", 'b"')):
        return None
    try:
        blob = rest[2:rest.index(rest[1], 2)]  # the b85 alphabet has no quotes
        return lzma.decompress(base64.b85decode(blob)).decode("utf-8")
    except (ValueError, SyntaxError, lzma.LZMAError, UnicodeDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quant.pack", description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default="train_gpt.py")
    ap.add_argument("--out", default=os.path.join("packed", "train_gpt.py"))
    args = ap.parse_args(argv)
    try:
        with open(args.source, encoding="utf-8") as f:
            src = f.read()
        packed = pack(src)
    except (OSError, SyntaxError) as e:
        print(f"error: {args.source}: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(packed)
    print(f"packed {args.source}: {len(src.encode())} -> {len(packed.encode())} bytes ({args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
