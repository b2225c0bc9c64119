"""CODE_PACK: the self-extracting copy of train_gpt.py runs the same computation as the source, and carries a
plug-in (a seed architecture's blocks, the n-gram mixer) inside the one file when asked to."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quant.pack import main as pack_main
from quant.pack import minify, pack, unpack
from submissions.logs import read_log
from tests.conftest import SP1024, TINY

ROOT = Path(__file__).resolve().parents[1]


def run(script: Path, cwd: Path, data: Path, run_id: str, **over: str) -> list[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **TINY,
        "DATA_PATH": str(data),
        "TOKENIZER_PATH": str(SP1024),
        "ITERATIONS": "3",
        "RUN_ID": run_id,
        "CODECS": "zlib",
        **over,
    }
    r = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    log = (cwd / "logs" / f"{run_id}.txt").read_text()
    assert log.startswith(script.read_text())  # each log embeds the file that actually ran
    return [
        l.split(" seconds ")[0].split(" tok/s ")[0]
        for l in log.splitlines()
        if l.startswith(("step ", "eval ", "artifact:"))
    ]


def test_packed_copy_gives_the_same_losses(tiny_data, tmp_path):
    src = (ROOT / "train_gpt.py").read_text()
    packed = tmp_path / "packed" / "train_gpt.py"
    packed.parent.mkdir()
    packed.write_text(pack(src))
    assert len(packed.read_bytes()) < len(src.encode()) / 2
    a, b = run(ROOT / "train_gpt.py", tmp_path, tiny_data, "src"), run(packed, tmp_path, tiny_data, "packed")
    strip = lambda lines: [l.split(" code ")[0] for l in lines]  # artifact line: same model bytes, other code bytes
    assert strip(a) == strip(b) and any(l.startswith("eval val") for l in a)


PLUG_INS = {  # plug-in -> a run that imports it, and a line of its code that the record's packed file lacks
    "seed_archs": (dict(ARCH="scan", SCAN_CHUNK="16", EVAL_PATHS="plain"), "class ScanBlock"),
    "ngram_mix": (dict(EVAL_PATHS="sliding,ngram", NGRAM_CHUNK="512"), "class NgramMixer"),
}


@pytest.mark.parametrize("name", PLUG_INS)
def test_a_bundled_plug_in_runs_in_one_file(tiny_data, tmp_path, name):
    """ARCH=scan, or an n-gram path: run from the source, train_gpt.py imports the plug-in from beside it and the
    log embeds both files, a `code:` line each; `quant.pack --bundle` carries the plug-in inside the one packed
    file, which runs the same computation and embeds only itself. The record's packed file carries neither."""
    src, plugin = (ROOT / "train_gpt.py").read_text(), (ROOT / f"{name}.py").read_text()
    packed = tmp_path / "packed" / "train_gpt.py"
    packed.parent.mkdir()
    packed.write_text(pack(src, {name: plugin}))
    over, marker = PLUG_INS[name]
    over = dict(ITERATIONS="2", PRE_EXPORT_PATHS="", **over)
    a, b = (
        run(ROOT / "train_gpt.py", tmp_path, tiny_data, "src", **over),
        run(packed, tmp_path, tiny_data, "pk", **over),
    )
    strip = lambda lines: [l.split(" code ")[0] for l in lines]
    last = over["EVAL_PATHS"].split(",")[-1]
    assert strip(a) == strip(b) and any(l.startswith(f"eval val {last}") for l in a)
    files = read_log(tmp_path / "logs/src.txt")["sources"]
    assert [(f["name"], f["source"], f["intact"]) for f in files] == [
        ("train_gpt.py", src, True),
        (f"{name}.py", plugin, True),
    ]
    assert [f["name"] for f in read_log(tmp_path / "logs/pk.txt")["sources"]] == ["train_gpt.py"]
    assert marker not in unpack(pack(src)) and marker in unpack(packed.read_text())


@pytest.mark.parametrize(
    "env,carried",
    [({}, ["kernels"]), ({"FUSED_MLP": "0", "FUSED_XSA": "0"}, []), ({"PRESET": "baseline"}, [])]
    + [({"ARCH": "pse"}, ["seed_archs"]), ({"EVAL_PATHS": "ttt_ngram"}, ["ngram_mix", "kernels"])],
)
def test_pack_auto_carries_what_the_configured_run_imports(tmp_path, monkeypatch, env, carried):
    """`make pack [KEY=VALUE ...]` (quant.pack --auto): the packed file carries the plug-ins that
    Hyperparameters.plugins names for the run those settings configure (PRESET=record unless given), and nothing
    else; a bad setting is its one-line error and no file."""
    for key in ("PRESET", "ARCH", "EVAL_PATHS", "FUSED_MLP", "FUSED_XSA", "FP8_MLP"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "train_gpt.py"
    assert pack_main([str(ROOT / "train_gpt.py"), "--auto", "--out", str(out)]) == 0
    table = unpack(out.read_text()).split("BUNDLED = ")[1].split("\n")[0] if carried else ""
    assert [name for name in ("seed_archs", "ngram_mix", "kernels") if f"'{name}': " in table] == carried
    assert ("BUNDLED = {" in unpack(out.read_text())) == bool(carried)
    monkeypatch.setenv("XSA", "0")
    monkeypatch.setenv("FUSED_XSA", "1")
    assert pack_main([str(ROOT / "train_gpt.py"), "--auto", "--out", str(tmp_path / "bad.py")]) == 1
    assert not (tmp_path / "bad.py").exists()


def test_minify_keeps_the_program_and_only_the_program():
    """minify changes no statement: its AST is the source's with docstrings removed (a docstring-only
    body becomes `pass`), strings that span lines (and blank lines or '#' inside them) are untouched."""

    def without_docstrings(tree: ast.AST) -> str:
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(body, list)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        return ast.dump(tree)

    tricky = (
        'def f(x):  # comment\n    """Doc.\n\n    more."""\n    s = """a  \n\n# not a comment\n  b"""\n'
        '    return s + f"{x!r:>4}" + "#"  # trailing\n\n\nclass C:\n    """Only a docstring."""\n'
    )
    for src in (tricky, (ROOT / "train_gpt.py").read_text()):
        out = minify(src)
        assert without_docstrings(ast.parse(out)) == without_docstrings(ast.parse(src))
        assert "Doc." not in out and "\n\n" not in out.replace('"""a  \n\n', "")
    out = minify(tricky)
    assert '"""a  \n\n# not a comment\n  b"""' in out and "# comment" not in out and "# trailing" not in out
