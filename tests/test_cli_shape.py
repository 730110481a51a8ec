"""The shape of the command line: one spelling per concept, fast --help without torch, exit codes,
a silent closed pipe, --json on stdout, and no import cycles in the package."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_parsers

from pairlens.cli import main
from pairlens.cli.options import is_deprecated

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC)}

#: the spelling of every shared concept (issue 11); another flag with the same dest is an error
SHARED = {
    "model": "--model", "checkpoint": "--checkpoint", "embedding": "--embedding",
    "device": "--device", "methods": "--methods", "param": "--param", "store": "--store",
    "out": "--out", "json": "--json", "seed": "--seed", "seeds": "--seeds",
    "threads": "--threads", "quiet": "--quiet", "batch_size": "--batch-size", "yes": "--yes",
}
#: spellings of shared concepts that may only survive as deprecated aliases
OLD_SPELLINGS = {"--db", "--database", "--output", "--output-dir", "--outdir", "--method",
                 "--forward-batch", "--clip-checkpoint", "--clip-arch", "--ckpt", "--weights",
                 "--num-threads", "--n-threads", "--all-methods", "--verbose", "--dir"}
#: flags whose normalised forms coincide but mean different things on purpose
ALLOWED_NEAR = {frozenset({"--seed", "--seeds"})}


def commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every (sub-)command path with its parser, the root included."""
    return cli_parsers()


def leaves() -> list[tuple[list[str], argparse.ArgumentParser]]:
    return [(path, p) for path, p in commands()
            if path and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


def long_flags(action: argparse.Action) -> list[str]:
    return [s for s in action.option_strings if s.startswith("--") and s != "--help"]


def test_the_parser_tree_spells_every_flag_one_way():
    dest_flags: dict[str, set[str]] = {}
    flag_dests: dict[str, set[str]] = {}
    where: dict[str, str] = {}
    for path, parser in commands():
        for action in parser._actions:
            if is_deprecated(action):
                continue
            for flag in long_flags(action):
                dest_flags.setdefault(action.dest, set()).add(flag)
                flag_dests.setdefault(flag, set()).add(action.dest)
                where.setdefault(flag, " ".join(path))
    problems = []
    for dest, flags in dest_flags.items():
        if len(flags) > 1:
            problems.append(f"{dest} is spelled {sorted(flags)}")
        if dest in SHARED and flags != {SHARED[dest]}:
            problems.append(f"shared option {dest} must be {SHARED[dest]}, found {sorted(flags)}")
    for flag, dests in flag_dests.items():
        if len(dests) > 1:
            problems.append(f"{flag} sets different things: {sorted(dests)}")
        if flag in OLD_SPELLINGS:
            problems.append(f"{flag} (in pairlens {where[flag]}) is an old spelling; use the "
                            "shared one and keep the old one with add_deprecated")

    def norm(flag: str) -> str:
        return re.sub(r"[-_]", "", flag).lower().rstrip("s")

    flags = sorted(flag_dests)
    for i, a in enumerate(flags):
        for b in flags[i + 1:]:
            if norm(a) == norm(b) and frozenset({a, b}) not in ALLOWED_NEAR:
                problems.append(f"{a} and {b} are the same word spelled two ways")
    assert not problems, "\n".join(problems)


def test_the_spelling_check_can_fail(monkeypatch):
    """A parser with --db next to --store elsewhere is caught."""
    from pairlens.cli import options

    original = options.add_store_option

    def old_style(parser, *args, **kwargs):
        original(parser, *args, **kwargs)
        if "evaluate" in parser.prog:
            parser.add_argument("--db", dest="store2")

    monkeypatch.setattr(options, "add_store_option", old_style)
    import pairlens.cli.evaluate as ev

    monkeypatch.setattr(ev, "add_store_option", old_style)
    with pytest.raises(AssertionError, match="--db"):
        test_the_parser_tree_spells_every_flag_one_way()


def test_every_command_reports_as_json_and_shared_flags_have_one_meaning():
    for path, parser in leaves():
        actions = {a.dest: a for a in parser._actions if not is_deprecated(a)}
        if path != ["demo"]:
            assert "json" in actions, f"pairlens {' '.join(path)} has no --json"
        if "out" in actions:
            assert actions["out"].metavar == "DIR", path  # --out is always a folder
        if "store" in actions:
            assert actions["store"].metavar == "FILE", path
        if "methods" in actions:
            assert actions["methods"].metavar == "LIST", path
        if "batch_size" in actions and path[0] not in ("train", "study"):
            assert "images per forward pass" in actions["batch_size"].help, path


def test_deprecated_spellings_name_an_existing_replacement():
    for path, parser in commands():
        flags = {f for a in parser._actions if not is_deprecated(a) for f in a.option_strings}
        for action in parser._actions:
            if is_deprecated(action):
                new = action.new.split()[0]
                assert new in flags, f"pairlens {' '.join(path)}: {action.option_strings} -> {new}"
                assert action.help == argparse.SUPPRESS


HELP_PROBE = """
import sys, time
from pairlens.cli import main
paths = {paths!r}
for path in paths:
    try:
        main(path + ["--help"])
    except SystemExit as exit:
        assert exit.code == 0, path
heavy = sorted(m for m in ("torch", "numpy", "matplotlib", "PIL", "scipy", "sklearn", "gradio")
               if m in sys.modules)
print("HEAVY", heavy)
"""


def test_help_imports_nothing_heavy_and_is_fast():
    paths = [path for path, _ in commands()]
    code = HELP_PROBE.format(paths=paths)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout.splitlines()[-1]
    best = min(_timed([sys.executable, "-m", "pairlens", "explain", "--help"]) for _ in range(3))
    assert best < 1.0, f"pairlens explain --help took {best:.2f} s"


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=ENV, check=True)
    return time.perf_counter() - start


def test_exit_codes(tmp_path, capsys, monkeypatch):
    assert main(["methods"]) == 0
    with pytest.raises(SystemExit) as bad_flag:  # argparse: usage error
        main(["explain", "--no-such-flag"])
    assert bad_flag.value.code == 2
    assert main(["explain", "--methods", "no-such-method"]) == 2
    assert main(["explain", "--model", "no-such-model"]) == 2
    assert main(["explain", "--param", "window=8"]) == 2  # interaction-cam has no window
    assert main(["explain", "a.jpg"]) == 2
    missing = tmp_path / "missing.jpg"
    assert main(["explain", str(missing), str(missing)]) == 1  # runtime: the file is missing
    capsys.readouterr()

    import pairlens.cli.explain as explain

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(explain, "run_explain", interrupted)
    assert main(["explain"]) == 130
    assert capsys.readouterr().err.strip() == "pairlens: interrupted"


def test_a_closed_pipe_is_silent(monkeypatch, capsys):
    proc = subprocess.Popen([sys.executable, "-m", "pairlens", "--help"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written (like `| head -0`)
    err = proc.stderr.read().decode()
    assert err == "" and proc.wait() in (0, 141)

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["methods"]) == 141
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args", [["methods"], ["models"], ["models", "info", "digits"]])
def test_json_is_one_object_on_stdout(args, capsys):
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr().out
    obj = json.loads(out)
    assert obj["command"] == " ".join(args[:2] if args[0] == "models" else args[:1])
    assert out.count("\n") == 1


def test_methods_json_describes_every_method(capsys):
    import pairlens.methods  # noqa: F401
    from pairlens.methods.registry import method_infos

    main(["methods", "--json"])
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["methods"]}
    for info in method_infos():
        assert listed[info.name]["params"] == {
            k: list(v) if isinstance(v, tuple) else v for k, v in info.params.items()}


# ----------------------------------------------------------------------------- import graph
def import_graph() -> dict[str, set[str]]:
    """Module -> the pairlens modules it imports anywhere in its source (top level, inside
    functions or under TYPE_CHECKING alike)."""
    root = SRC / "pairlens"
    modules: dict[str, Path] = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = f

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t.startswith("pairlens"):
                    found = resolve(t)
                    if found and found != name:
                        graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "pairlens.cli.options" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: the pipeline of DESIGN.md, lowest first; a package may import only from its own or lower rows
LAYERS = [
    {"io", "params", "progress", "validation", "data"},
    {"models"},
    {"methods", "attribution"},
    {"explanation", "viz", "metrics", "corpus"},
    {"study", "training", "analysis"},
    {"report", "demo"},
    {"cli", "__main__"},
]


def test_lower_layers_never_import_higher_ones():
    rank = {name: i for i, row in enumerate(LAYERS) for name in row}
    wrong = []
    for module, imports in import_graph().items():
        own = module.split(".")[1] if "." in module else None
        if own is None:
            continue
        for target in imports:
            other = target.split(".")[1] if "." in target else None
            if other is None or other == own:
                continue
            if rank.get(other, 0) > rank.get(own, 99):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_importing_pairlens_never_switches_the_matplotlib_backend():
    code = ("import matplotlib; matplotlib.use('svg'); import pairlens, pairlens.viz, "
            "pairlens.explanation, pairlens.cli.explain; print(matplotlib.get_backend())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert proc.stdout.strip() == "svg", proc.stderr[-1000:]
