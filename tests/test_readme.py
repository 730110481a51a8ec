"""The README's Python quick start runs as written (with bundled images for a.jpg / b.jpg)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pairlens.data.bundled import example_image_paths

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quick_start_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"## Python quick start\s+```python\n(.*?)```", text, re.S).group(1)
    a, b = example_image_paths("photos")[:2]
    code = block.replace('"a.jpg"', repr(str(a))).replace('"b.jpg"', repr(str(b)))
    code = code.replace(".show()", "")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README quick start", "exec"), namespace)
    exp, scores = namespace["exp"], namespace["scores"]
    assert exp.maps[0].shape == (1, 112, 112)
    assert set(scores) >= {"SI", "SD", "CI", "CD", "SAD", "CAD"}
    assert all(torch.isfinite(scores[k]).all() for k in ("SI", "SD", "CI", "CD"))
    assert (tmp_path / "out" / "interaction-cam.png").is_file()
