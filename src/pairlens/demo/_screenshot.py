"""Developer tool: regenerate the README screenshot of the demo (docs/img/demo.png).

    python -m pairlens.demo._screenshot docs/img/demo.png

Starts ``pairlens demo`` on a free loopback port, uploads the bundled cat photo and its augmented
view, picks the ``photos`` model, runs Interaction-CAM in Debian's headless Chromium
(``/usr/bin/chromium``, driven by Playwright) and saves the page from the top to the similarity
line (the example table is hidden to keep the picture compact).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def take(out: Path, image1: str = "cat.jpg", image2: str = "cat-view.jpg",
         model: str = "photos") -> Path:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from pairlens.data.bundled import examples_dir

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pairlens.cli import main; sys.exit(main())",
         "demo", "--port", str(port), "--device", "cpu"],
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("pairlens demo did not start") from None
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#pl-image1 input[type=file]", state="attached")
            for which, name in (("#pl-image1", image1), ("#pl-image2", image2)):
                page.locator(f"{which} input[type=file]").set_input_files(
                    str(examples_dir() / name))
                page.wait_for_timeout(1500)
            page.locator("#pl-model input").click()
            page.get_by_role("option", name=model).click()
            page.locator("#pl-run").click()
            page.wait_for_selector("#pl-overlay2 img")
            page.wait_for_timeout(1500)
            page.add_style_tag(content="#pl-examples {display: none !important}")
            page.wait_for_timeout(300)
            bottom = page.locator("#pl-summary").evaluate(
                "el => el.getBoundingClientRect().bottom + window.scrollY")
            png = page.screenshot(full_page=True)
            browser.close()
        im = Image.open(io.BytesIO(png))
        im = im.crop((0, 0, im.width, min(im.height, int(bottom) + 16)))
        out.parent.mkdir(parents=True, exist_ok=True)
        im.save(out, optimize=True)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    print(take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/demo.png")))
