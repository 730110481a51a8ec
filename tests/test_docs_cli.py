"""README, docs and --help agree: every ``pairlens`` command shown in a bash block of the README,
docs/ or a model card parses with today's parser, without a deprecated spelling; the README's
install-and-test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pairlens.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "src/pairlens/models/weights").glob("*.md"))]


def shown_commands(path: Path) -> list[str]:
    """``pairlens ...`` commands of the page's bash (or unlabelled) code blocks."""
    found = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", path.read_text(), re.S):
        if lang not in ("", "bash", "sh", "console"):
            continue
        current = ""
        for line in body.splitlines():
            line = line.strip()
            current += (" " if current else "") + line.rstrip("\\").strip()
            if line.endswith("\\"):
                continue
            for part in re.split(r"&&|;", re.sub(r"\s+#\s.*$", "", current)):
                part = part.strip().replace("$(which pairlens)", "-m pairlens")
                part = re.sub(r"^torchrun .*?-m pairlens", "pairlens", part)
                if re.match(r"pairlens [a-z-]+( |$)", part):
                    found.append(part)
            current = ""
    return found


ALL = [(page.relative_to(ROOT).as_posix(), cmd) for page in PAGES for cmd in shown_commands(page)]


def test_the_pages_show_commands():
    pages = {page for page, _ in ALL}
    assert {"README.md", "docs/evaluation.md", "docs/corpus.md", "docs/excon.md"} <= pages
    assert len(ALL) > 30


@pytest.mark.parametrize(("page", "command"), ALL, ids=[f"{p}:{c[:50]}" for p, c in ALL])
def test_shown_commands_parse_without_deprecated_spellings(page, command, capsys):
    import shlex

    parser = build_parser()
    try:
        args = parser.parse_args(shlex.split(command)[1:])
    except SystemExit:
        pytest.fail(f"{page}: {command!r} does not parse: {capsys.readouterr().err.strip()}")
    assert "deprecated" not in capsys.readouterr().err, f"{page}: {command!r}"
    for name in ("legacy_stores", "legacy_checkpoint"):  # deprecated positional forms
        assert not getattr(args, name, None), f"{page}: {command!r} uses a deprecated form"
    models = getattr(args, "model", None) or []
    for name in [models] if isinstance(models, str) else models:
        from pairlens.models.registry import model_info

        for one in name.split(","):
            model_info(one)  # a registered model name, not a typo


def test_the_readme_test_command_is_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.search(r"## The two commands(.*?)\n## ", readme, re.S).group(1)
    commands = re.findall(r"```bash\n(.*?)\n```", blocks)
    assert "pip install . && pairlens explain" in commands
    assert 'pip install ".[test]" && python -m pytest' in commands
    assert 'pip install ".[test]" && python -m pytest' in (ROOT / ".ci/run").read_text()
    cpu = [c for c in commands if "download.pytorch.org/whl/cpu" in c]
    assert cpu == ["pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
                   " && pip install . && pairlens explain"]
