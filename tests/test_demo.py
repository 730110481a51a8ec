"""The web demo (``pairlens demo``): its logic, and the page itself in a headless browser.

The browser tests start the real ``pairlens demo`` command on a free loopback port and drive it
with Playwright in Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/run``). They skip
only when Chromium, Playwright or Gradio is missing.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pairlens.demo import core
from pairlens.demo.core import DemoError
from pairlens.methods.registry import get_method, method_infos

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# ---------------------------------------------------------------------- parameters
@pytest.mark.parametrize("method", [m.name for m in method_infos()])
def test_widget_defaults_round_trip_to_the_methods_defaults(method):
    # what each widget shows by default must coerce back to the method's own default
    specs = core.param_specs(method)
    defaults = get_method(method).params
    assert [s.name for s in specs] == list(defaults)
    shown = {s.name: s.display_default() for s in specs}
    assert core.coerce_params(method, shown) == defaults


def test_param_kinds_follow_the_signature():
    kinds = {s.name: s for s in core.param_specs("averaged-transforms")}
    assert kinds["transform"].kind == "choice" and "rotation" in kinds["transform"].choices
    assert kinds["interpolation"].choices == ("paper", "strength")
    assert kinds["strength"].kind == "pair" and kinds["strength"].optional
    assert kinds["guided"].kind == "bool" and kinds["steps"].kind == "int"
    reduction = {s.name: s for s in core.param_specs("interaction-cam")}["reduction"]
    assert reduction.choices == ("mean", "max", "attention")


@pytest.mark.parametrize(
    ("method", "raw", "expected"),
    [
        ("pairwise-occlusion", {"area": "0.2; 0.4", "seed": ""},
         {"area": (0.2, 0.4), "seed": None}),
        ("smoothgrad", {"n_samples": 20.0, "noise_level": "0.3"},
         {"n_samples": 20, "noise_level": 0.3}),
        ("averaged-transforms", {"strength": "", "guided": True},
         {"strength": None, "guided": True}),
        ("conditional-occlusion", {"window": "", "stride": "16"},
         {"window": None, "stride": 16}),
    ],
)
def test_coerce_params_converts_widget_values(method, raw, expected):
    assert core.coerce_params(method, raw) == expected


@pytest.mark.parametrize(
    ("method", "raw", "needle"),
    [
        ("smoothgrad", {"n_samples": 100000}, "n_samples must be between"),
        ("smoothgrad", {"n_samples": 2.5}, "must be an integer >= 1; got 2.5"),
        ("smoothgrad", {"noise_level": "lots"}, "must be a number >= 0"),
        ("smoothgrad", {"guided": "perhaps"}, "true or false"),
        ("pairwise-occlusion", {"area": "0.3"}, "two numbers"),
        ("pairwise-occlusion", {"area": "0.5, 0.1"}, "lo <= hi"),
        ("interaction-cam", {"reduction": "median"}, "must be one of"),
        ("conditional-occlusion", {"stride": 1}, "stride must be between"),
        ("conditional-occlusion", {"window": 0}, "window must be an integer >= 1"),
    ],
)
def test_coerce_params_rejects_bad_values_naming_the_parameter(method, raw, needle):
    with pytest.raises(DemoError, match=needle) as err:
        core.coerce_params(method, raw)
    assert f"parameter {next(iter(raw))}" in str(err.value)


# ---------------------------------------------------------------------- uploads
def test_load_upload_reads_files_only_inside_the_allowed_folders(tmp_path):
    inside, outside = tmp_path / "app", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(inside / "a.png")
    Image.new("RGB", (20, 10), (0, 255, 0)).save(outside / "b.png")
    img = core.load_upload({"path": str(inside / "a.png"), "orig_name": "a.png"}, "image 1",
                           [inside])
    assert img.size == (20, 10) and img.getpixel((3, 3)) == (255, 0, 0)
    for payload in ({"path": str(outside / "b.png")}, str(inside / ".." / "elsewhere" / "b.png")):
        with pytest.raises(DemoError, match="not an upload of this page"):
            core.load_upload(payload, "image 1", [inside])


def test_load_upload_errors_name_the_upload_not_the_temporary_path(tmp_path):
    bad = tmp_path / "upload-8f3a"
    bad.write_text("hello, not an image")
    with pytest.raises(DemoError) as err:
        core.load_upload({"path": str(bad), "orig_name": "notes.png"}, "image 2", [tmp_path])
    assert str(err.value).startswith("image 2 (notes.png): ")
    assert "not an image" in str(err.value) and str(tmp_path) not in str(err.value)
    with pytest.raises(DemoError, match="image 1: upload an image"):
        core.load_upload(None, "image 1", [tmp_path])


def test_load_upload_limits_bytes_and_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (50, 40)).save(path)
    payload = {"path": str(path), "orig_name": "big.png"}
    with pytest.raises(DemoError, match="the limit is"):
        core.load_upload(payload, "image 1", [tmp_path], max_bytes=path.stat().st_size - 1)
    with pytest.raises(DemoError, match="50x40 pixels"):
        core.load_upload(payload, "image 1", [tmp_path], max_pixels=50 * 40 - 1)
    assert core.load_upload(payload, "image 1", [tmp_path], max_pixels=50 * 40).size == (50, 40)


def test_load_upload_decodes_pasted_data_urls():
    import base64

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (1, 2, 3)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    img = core.load_upload({"url": url}, "image 1")
    assert img.size == (8, 6) and img.getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(DemoError, match="not an image"):
        core.load_upload({"url": "data:image/png;base64,aGVsbG8="}, "image 1")


# ---------------------------------------------------------------------- augmentation and runs
def test_augmentation_matches_the_transform_family(square):
    x1 = square.normalize(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    x01 = square.denormalize(x1).clamp(0, 1)
    flipped = core.augment(square, x1, "horizontal-flip", 1.0, seed=0)
    torch.testing.assert_close(square.denormalize(flipped), x01.flip(-1), atol=1e-5, rtol=0)
    same = core.augment(square, x1, "grayscale", 0.0, seed=3)
    torch.testing.assert_close(same, x1, atol=1e-5, rtol=0)
    a = core.augment(square, x1, "color-jitter", 0.5, seed=1)
    assert torch.equal(a, core.augment(square, x1, "color-jitter", 0.5, seed=1))
    assert not torch.allclose(a, core.augment(square, x1, "color-jitter", 0.5, seed=2))
    with pytest.raises(DemoError, match="between 0 and 90"):
        core.augment(square, x1, "rotation", 120.0, seed=0)


def test_run_pair_score_is_the_models_similarity_and_files_are_written(square, tmp_path):
    g = torch.Generator().manual_seed(0)
    im1 = Image.fromarray((torch.rand(40, 40, 3, generator=g).numpy() * 255).astype(np.uint8))
    im2 = Image.fromarray((torch.rand(40, 40, 3, generator=g).numpy() * 255).astype(np.uint8))
    x1, x2 = core.prepare_pair(square, im1, im2)
    run = core.run_pair(square, x1, x2, "interaction-cam", {"reduction": "max"})
    with torch.no_grad():
        expected = square.similarity(square.preprocess(im1), square.preprocess(im2))
    torch.testing.assert_close(run.explanation.score, expected)
    assert run.explanation.params["reduction"] == "max"
    ov1, ov2 = core.display_overlays(run.explanation, min_side=100)
    assert ov1.size == ov2.size == (128, 128)  # 32 px enlarged by a whole factor (4)
    written = core.save_downloads(run, core.new_run_dir(tmp_path))
    assert {p.suffix for p in written} == {".png", ".npz", ".json"}
    maps = np.load(next(p for p in written if p.suffix == ".npz"))
    np.testing.assert_array_equal(maps["map1"], run.explanation.maps[0].numpy())
    with pytest.raises(DemoError, match="image 2"):
        core.prepare_pair(square, im1, None)


def test_faithfulness_and_compare_grid(square):
    g = torch.Generator().manual_seed(1)
    x1, x2 = (square.normalize(torch.rand(1, 3, 32, 32, generator=g)) for _ in range(2))
    runs = [core.run_pair(square, x1, x2, m, {}) for m in ("grad-cam", "interaction-cam")]
    f = core.faithfulness(runs[0], square)
    from pairlens.metrics import evaluate

    ref = evaluate(square, x1, x2, runs[0].explanation, metrics=core.FAITHFULNESS_METRICS)
    assert f.values == pytest.approx({k: float(v[0]) for k, v in ref.items()})
    assert set(f.curves) == set(core.FAITHFULNESS_METRICS)
    assert "SI" in core.metrics_markdown(f) and core.curves_image(f).size[0] > 0
    one = core.compare_grid(runs[:1])
    two = core.compare_grid(runs)
    assert two.size[0] > one.size[0] and two.size[1] == one.size[1]


def test_new_run_dir_removes_old_runs(tmp_path):
    old = core.new_run_dir(tmp_path)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    new = core.new_run_dir(tmp_path, max_age_seconds=3600)
    assert new.is_dir() and not old.exists()


def test_checkpoint_arguments_are_checked(tmp_path):
    with pytest.raises(DemoError, match="NAME=PATH"):
        core.parse_checkpoint_args(["simclr-v2-r50-1x"])
    with pytest.raises(DemoError, match="no such file"):
        core.parse_checkpoint_args([f"simclr-v2-r50-1x={tmp_path / 'missing.pth'}"])
    with pytest.raises(DemoError, match="--checkpoint simclr-v2-r50-1x=PATH"):
        core.model_choices(["simclr-v2-r50-1x"], device="cpu")


def test_cli_help_does_not_import_gradio():
    code = (
        "import sys, contextlib, io\n"
        "from pairlens.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['demo', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert '--checkpoint' in out.getvalue(), out.getvalue()\n"
        "assert 'gradio' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_page_messages_are_escaped_and_unexpected_errors_explained():
    from pairlens.demo.app import _status, _user_message

    html = _status("error", 'image 1 (<img src=x onerror="alert(1)">.png): bad')
    assert "<img" not in html and "&lt;img" in html and 'role="alert"' in html
    assert _user_message(DemoError("image 1: upload an image")) == "image 1: upload an image"
    assert _user_message(RuntimeError("CUDA out of\nmemory")) == (
        "the model or method failed (RuntimeError: CUDA out of memory)"
    )


# ---------------------------------------------------------------------- the page in a browser
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """``pairlens demo --model digits`` on a free loopback port; yields its URL."""
    # find_spec, not import: gradio is imported by the server only (with telemetry switched off)
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the demo needs gradio (pip install 'pairlens[demo]')")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("browser tests need playwright (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("demo-server") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PAIRLENS_DEBUG": "1"}
    cmd = [sys.executable, "-c", "import sys; from pairlens.cli import main; sys.exit(main())",
           "demo", "--model", "digits", "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"pairlens demo exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"pairlens demo did not start in 120 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def page(demo_server):
    from playwright.sync_api import sync_playwright

    url, _ = demo_server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 1300})
            pg.set_default_timeout(60_000)
            pg.goto(url)
            pg.wait_for_selector("#pl-image1 input[type=file]", state="attached")
            yield pg
        finally:
            browser.close()


def _status(page, which: str = "#pl-status") -> str:
    # the message element only (Gradio may overlay its own "processing" text on the component)
    message = page.locator(f"{which} .pl-ok, {which} .pl-error, {which} .pl-info")
    return message.first.inner_text().strip() if message.count() else ""


def _wait_status(page, pattern: str, timeout_s: float = 90.0) -> str:
    deadline = time.time() + timeout_s
    text = ""
    while time.time() < deadline:
        text = _status(page)
        if re.search(pattern, text):
            return text
        page.wait_for_timeout(250)
    raise AssertionError(f"status never matched {pattern!r}; last: {text!r}")


def test_demo_explains_two_bundled_images_with_interaction_cam(page, demo_server, tmp_path):
    import pairlens
    from pairlens.data.bundled import examples_dir

    a, b = examples_dir() / "digit-3a.png", examples_dir() / "digit-3b.png"
    page.locator("#pl-image1 input[type=file]").set_input_files(str(a))
    _wait_status(page, "image 1: ready")
    page.locator("#pl-image2 input[type=file]").set_input_files(str(b))
    _wait_status(page, "image 2: ready")
    assert "interaction-cam" in page.locator("#pl-method input").input_value()
    page.locator("#pl-run").click()
    status = _wait_status(page, r"Done|Error")
    assert status.startswith("Done"), status

    for which in ("#pl-overlay1 img", "#pl-overlay2 img"):
        page.wait_for_function(
            "sel => { const i = document.querySelector(sel);"
            " return i !== null && i.complete && i.naturalWidth > 0; }",
            arg=which,
        )
        width = page.locator(which).first.evaluate("el => el.naturalWidth")
        assert width >= 256  # 32 px maps enlarged for display
    summary = page.locator("#pl-summary").inner_text()
    match = re.search(r"Similarity \(cosine\): (-?\d+\.\d+)", summary)
    assert match, summary
    model = pairlens.load_model("digits")
    with torch.no_grad():
        expected = float(model.similarity(model.preprocess(a), model.preprocess(b))[0])
    assert float(match.group(1)) == pytest.approx(expected, abs=1e-4)
    assert "interaction-cam" in summary
    files = re.sub(r"\s+", "", page.locator("#pl-files").inner_text())
    assert "interaction-cam.npz" in files and "interaction-cam.png" in files
    # the raw maps offered for download hold the shown score and 32 x 32 maps
    hrefs = page.locator("#pl-files a[href]").evaluate_all("els => els.map(e => e.href)")
    npz_url = next(h for h in hrefs if ".npz" in h)
    with urllib.request.urlopen(npz_url, timeout=10) as r:
        raw = np.load(io.BytesIO(r.read()))
    assert raw["map1"].shape == raw["map2"].shape == (1, 32, 32)
    assert float(raw["score"][0]) == pytest.approx(expected, abs=1e-5)
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_demo_shows_an_error_for_a_non_image_upload(page, tmp_path):
    # nothing uploaded: the page says what is missing
    page.locator("#pl-run").click()
    assert "image 1: upload an image" in _wait_status(page, "Error: could not explain")

    # a text file named like an image passes the browser's type check; the server refuses it
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not an image")
    page.locator("#pl-image1 input[type=file]").set_input_files(str(fake))
    status = _wait_status(page, "holiday")
    assert status.startswith("Error: image 1 (holiday.png):") and "not an image" in status
    page.locator("#pl-run").click()
    status = _wait_status(page, "could not explain")
    assert "image 1 (holiday.png)" in status and "not an image" in status
    assert page.locator("#pl-overlay1 img").count() == 0

    # a file of another type is refused by the page before upload, with a message
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text")
    page.locator("#pl-image2 input[type=file]").set_input_files(str(notes))
    toast = page.get_by_text(re.compile(r"Invalid file type.*notes\.txt")).first
    toast.wait_for(state="visible", timeout=10_000)
    page.screenshot(path=str(tmp_path / "demo-error.png"), full_page=True)
    assert page.locator("#pl-run").is_enabled()  # the page is still alive


def test_demo_serves_no_file_outside_its_own_folder(demo_server):
    url, _ = demo_server
    project_file = Path(__file__).resolve().parents[1] / "pyproject.toml"
    for path in ("/etc/passwd", str(project_file), "pyproject.toml"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert err.value.code in (403, 404), path


def test_demo_correspondence_click_shows_the_matches(page):
    # a correspondence method adds two clickable views; a click on image 2 redraws both
    from pairlens.data.bundled import examples_dir

    a, b = examples_dir() / "digit-3a.png", examples_dir() / "digit-3b.png"
    page.locator("#pl-image1 input[type=file]").set_input_files(str(a))
    _wait_status(page, "image 1: ready")
    page.locator("#pl-image2 input[type=file]").set_input_files(str(b))
    _wait_status(page, "image 2: ready")
    page.locator("#pl-method input").click()
    page.get_by_role("option", name=re.compile(r"^feature-grid")).click()
    page.locator("#pl-run").click()
    status = _wait_status(page, r"Done|Error")
    assert status.startswith("Done"), status
    assert "completeness error" in page.locator("#pl-summary").inner_text()
    view = page.locator("#pl-match2 img").first
    view.wait_for(state="visible")
    view.scroll_into_view_if_needed()
    before = page.locator("#pl-match1 img").first.get_attribute("src")
    box = view.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.2)
    assert _wait_status(page, r"Matches of image 2|could not").startswith("Matches of image 2")
    page.wait_for_function(
        "old => { const i = document.querySelector('#pl-match1 img');"
        " return i !== null && i.getAttribute('src') !== old; }", arg=before)
    # and back: a click on image 1 (lower left) redraws image 2's view; the clicked pixel of the
    # 32-px model input is in the lower-left quarter (not transposed or mirrored)
    assert "target" in page.locator("#pl-summary").inner_text()
    view1 = page.locator("#pl-match1 img").first
    before2 = page.locator("#pl-match2 img").first.get_attribute("src")
    view1.scroll_into_view_if_needed()  # the views sit low on the page: bring them on screen
    box = view1.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)
    status = _wait_status(page, r"Matches of image 1|could not")
    match = re.search(r"Matches of image 1, pixel \(row (\d+), col (\d+)\)", status)
    assert match, status
    assert int(match.group(1)) >= 16 and int(match.group(2)) < 16  # the lower-left quarter
    page.wait_for_function(
        "old => { const i = document.querySelector('#pl-match2 img');"
        " return i !== null && i.getAttribute('src') !== old; }", arg=before2)
