"""The Gradio page of ``pairlens demo`` (seed 000, §III; see docs/demo.md).

:func:`build_app` lays out the page over :mod:`pairlens.demo.core`; :func:`serve` starts it.
Gradio is imported only inside these functions (install it with ``pip install 'pairlens[demo]'``).

Safety and load, by construction:

* every handler catches its errors and shows them in the page (a status line and a toast), so a
  bad upload, a wrong parameter or a failing model never leaves a dead page;
* uploads are limited in bytes (Gradio's ``max_file_size``) and in pixels
  (:data:`~pairlens.demo.core.MAX_IMAGE_PIXELS`), the latter checked on the file's header before
  any decoding: the image inputs hand the upload over undecoded (:func:`_undecoded`), so Gradio
  never converts a huge image; image handlers read only files inside the app's own temporary
  folder and its copy of the bundled examples;
* Gradio's own cache lives in the app's temporary folder (``GRADIO_TEMP_DIR``), ``allowed_paths``
  is only the examples folder, and the folder is deleted when the app stops;
* requests wait in a queue (``concurrency`` at a time, default 1, at most ``queue_size``
  waiting); model computations additionally hold one lock, because forward hooks and guided
  backpropagation are not safe to run concurrently on one model.
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import signal
import tempfile
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pairlens.demo import core
from pairlens.demo.core import Augmentation, DemoError, ModelChoice, ModelPool

log = logging.getLogger("pairlens.demo")

TITLE = "PairLens: why are these two images similar?"
MODE_PAIR = "two images"
MODE_AUG = "image 2 = augmentation of image 1"
DEFAULT_METHOD = "interaction-cam"
DEFAULT_COMPARE = ("input-x-gradient", "smoothgrad", "grad-cam", "interaction-cam")
CSS = """
#pl-status .pl-error {color: #b00020; background: #fdecee; border: 1px solid #f5c2c7;
  border-radius: 6px; padding: 8px 12px; font-weight: 600;}
#pl-status .pl-ok {color: #185c37; padding: 4px 2px;}
#pl-status .pl-info {color: #555; padding: 4px 2px;}
"""


def _import_gradio(tmp_root: Path):
    """Import Gradio with its cache in ``tmp_root`` and no telemetry (set before import)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_root / "gradio"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio as gr
    except ImportError:
        raise DemoError("the web demo needs Gradio: pip install 'pairlens[demo]'") from None
    return gr


def _status(kind: str, message: str) -> str:
    role = ' role="alert"' if kind == "error" else ""
    prefix = "Error: " if kind == "error" else ""
    return f'<div class="pl-{kind}"{role}>{prefix}{html.escape(message)}</div>'


def _undecoded(component):
    """Make an image input hand over the upload itself (``{"path", "url", "orig_name"}``)
    instead of letting Gradio open, convert (decode) or re-encode it: the handlers then check the
    pixel limit on the file's header before anything is decoded (:func:`core.load_upload`)."""

    def preprocess(payload: Any) -> dict[str, Any] | None:
        if payload is None:
            return None
        data = payload.model_dump() if hasattr(payload, "model_dump") else dict(payload)
        return {k: data.get(k) for k in ("path", "url", "orig_name")}

    component.preprocess = preprocess
    return component


def _copy_examples(dest: Path) -> list[tuple[str, str, str]]:
    """Copy the bundled example pairs into ``dest``; rows (path 1, path 2, kind)."""
    try:
        from pairlens.data.bundled import EXAMPLE_FILES, examples_dir
    except ImportError:
        return []
    src = examples_dir()
    rows = []
    dest.mkdir(parents=True, exist_ok=True)
    for kind, pairs in EXAMPLE_FILES.items():
        for a, b in pairs:
            if not ((src / a).is_file() and (src / b).is_file()):
                continue
            for n in (a, b):
                if not (dest / n).exists():
                    shutil.copyfile(src / n, dest / n)
            rows.append((str(dest / a), str(dest / b), kind))
    return rows


def build_app(
    choices: Sequence[ModelChoice],
    tmp_root: Path,
    examples: bool = True,
    max_upload_bytes: int = core.MAX_UPLOAD_BYTES,
    concurrency: int = 1,
    queue_size: int = 16,
):
    """The demo page as a ``gradio.Blocks`` (queued), offering the models ``choices``.

    ``tmp_root`` is the app's own folder: Gradio's cache, the example copies and the files
    offered for download live there, and handlers read no file outside it.
    """
    gr = _import_gradio(tmp_root)
    tmp_root = Path(tmp_root).resolve()
    runs_root = tmp_root / "runs"
    examples_root = tmp_root / "examples"
    gradio_cache = Path(os.environ.get("GRADIO_TEMP_DIR", tmp_root / "gradio")).resolve()
    allowed_roots = [tmp_root, gradio_cache, Path(tempfile.gettempdir()).resolve() / "gradio"]
    pool = ModelPool(choices)
    compute_lock = threading.Lock()
    labels = core.method_labels()
    method_names = list(labels)
    families = list(core.FAMILIES)
    example_rows = _copy_examples(examples_root) if examples else []

    def read_image(payload: Any, what: str):
        return core.load_upload(payload, what, allowed_roots, max_bytes=max_upload_bytes)

    with gr.Blocks(title="PairLens demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"# {TITLE}\n"
            "Upload or paste two images (or pick an example), choose a model and a pair "
            "explanation method, and see which regions of each image make the model find them "
            "similar. Everything runs on this machine; uploads stay in the app's temporary folder."
        )
        with gr.Row():
            img1 = _undecoded(gr.Image(label="Image 1", sources=["upload", "clipboard"],
                                       type="filepath", height=260, elem_id="pl-image1"))
            img2 = _undecoded(gr.Image(label="Image 2", sources=["upload", "clipboard"],
                                       type="filepath", height=260, elem_id="pl-image2"))
        mode = gr.Radio([MODE_PAIR, MODE_AUG], value=MODE_PAIR, label="Image 2 is",
                        elem_id="pl-mode")
        with gr.Row(visible=False) as aug_row:
            lo, hi = core.FAMILIES[families[0]][1]
            aug_family = gr.Dropdown(families, value=families[0], label="Augmentation family",
                                     elem_id="pl-aug-family")
            aug_strength = gr.Slider(lo, hi, value=(lo + hi) / 2, label="Strength",
                                     elem_id="pl-aug-strength")
            aug_seed = gr.Number(0, precision=0, label="Seed", elem_id="pl-aug-seed")
        with gr.Row():
            model_dd = gr.Dropdown(pool.labels, value=pool.labels[0], label="Model",
                                   elem_id="pl-model")
            method_dd = gr.Dropdown([(labels[m], m) for m in method_names],
                                    value=DEFAULT_METHOD if DEFAULT_METHOD in labels
                                    else method_names[0],
                                    label="Method", elem_id="pl-method")
        if example_rows:
            bundled = set(pool.labels)
            rows = [[a, b, kind if kind in bundled else pool.labels[0]]
                    for a, b, kind in example_rows]
            gr.Examples(rows, inputs=[img1, img2, model_dd],
                        label="Bundled example pairs (with their model)",
                        examples_per_page=8, elem_id="pl-examples")

        # one column of parameter widgets per method, shown when that method is picked
        param_groups = {}
        param_widgets: list[tuple[str, core.ParamSpec, Any]] = []
        with gr.Accordion("Method parameters (the paper's defaults)", open=True):
            for name in method_names:
                selected = name == method_dd.value
                with gr.Row(visible=selected) as group:
                    specs = core.param_specs(name)
                    if not specs:
                        gr.Markdown(f"`{name}` has no parameters.")
                    for spec in specs:
                        param_widgets.append((name, spec, _widget(gr, spec, name)))
                param_groups[name] = group

        with gr.Tabs():
            with gr.Tab("Explain", id="explain"):
                with gr.Row():
                    want_metrics = gr.Checkbox(
                        False, label="Also compute SI / SD / CI / CD and the insertion / "
                        "deletion curves (slower)", elem_id="pl-metrics")
                    run_btn = gr.Button("Explain", variant="primary", elem_id="pl-run")
                status = gr.HTML(_status("info", "Ready."), elem_id="pl-status")
                with gr.Row():
                    out1 = gr.Image(label="Image 1 explanation", type="pil", interactive=False,
                                    height=300, elem_id="pl-overlay1")
                    out2 = gr.Image(label="Image 2 explanation", type="pil", interactive=False,
                                    height=300, elem_id="pl-overlay2")
                summary = gr.Markdown("", elem_id="pl-summary")
                with gr.Column(visible=False, elem_id="pl-match") as match_box:
                    gr.Markdown("**Which part matches which.** Click a point of either image: "
                                "the other shows how strongly each of its regions is matched "
                                "with the clicked region (outlined).")
                    with gr.Row():
                        match1 = gr.Image(label="Image 1 (click a point)", type="pil",
                                          interactive=False, height=300, elem_id="pl-match1")
                        match2 = gr.Image(label="Image 2 (click a point)", type="pil",
                                          interactive=False, height=300, elem_id="pl-match2")
                match_state = gr.State(None)
                metrics_md = gr.Markdown("", visible=False, elem_id="pl-metrics-table")
                curves = gr.Image(label="Insertion / deletion curves", type="pil",
                                  interactive=False, visible=False, elem_id="pl-curves")
                files = gr.File(label="Download: figure (PNG), raw maps (.npz), metadata (JSON)",
                                file_count="multiple", interactive=False, elem_id="pl-files")
            with gr.Tab("Compare methods", id="compare"):
                compare_methods = gr.CheckboxGroup(
                    method_names, value=[m for m in DEFAULT_COMPARE if m in labels],
                    label="Methods (each with the parameters set above)",
                    elem_id="pl-compare-methods")
                compare_btn = gr.Button("Compare", variant="primary", elem_id="pl-compare")
                compare_status = gr.HTML(_status("info", "Ready."), elem_id="pl-compare-status")
                grid = gr.Image(label="Same pair, several methods", type="pil",
                                interactive=False, elem_id="pl-grid")
                grid_file = gr.File(label="Download the grid (PNG)", interactive=False,
                                    elem_id="pl-grid-file")

        common_inputs = [img1, img2, mode, aug_family, aug_strength, aug_seed, model_dd]
        widget_inputs = [w for _, _, w in param_widgets]

        def params_for(method: str, values: Sequence[Any]) -> dict[str, Any]:
            raw = {spec.name: v for (m, spec, _), v in zip(param_widgets, values, strict=True)
                   if m == method}
            return core.coerce_params(method, raw)

        def prepare(values: Sequence[Any]):
            p1, p2, mode_v, fam, strength, seed, model_label = values
            model = pool.get(model_label)
            image1 = read_image(p1, "image 1")
            aug = None
            image2 = None
            if mode_v == MODE_AUG:
                aug = Augmentation(fam, strength, None if seed in (None, "") else int(seed))
            else:
                image2 = read_image(p2, "image 2")
            x1, x2 = core.prepare_pair(model, image1, image2, aug)
            sources = (_name(p1, "image 1"),
                       f"{fam} (strength {float(strength):g}) of image 1" if aug
                       else _name(p2, "image 2"))
            return model, model_label, x1, x2, sources

        def on_explain(*values):
            common = values[: len(common_inputs)]
            method, metrics_on = values[len(common_inputs): len(common_inputs) + 2]
            widget_values = values[len(common_inputs) + 2:]
            try:
                params = params_for(method, widget_values)
                with compute_lock:
                    model, model_label, x1, x2, sources = prepare(common)
                    run = core.run_pair(model, x1, x2, method, params, sources)
                    faith = core.faithfulness(run, model) if metrics_on else None
                ov1, ov2 = core.display_overlays(run.explanation)
                out_dir = core.new_run_dir(runs_root)
                paths = core.save_downloads(run, out_dir, faith)
                text = core.summary_markdown(run, model_label)
                if faith is not None:
                    table = core.metrics_markdown(faith)
                    plot = core.curves_image(faith, f"{method} · {model_label}")
                else:
                    table, plot = "", None
                exp = run.explanation
                pair_views = (core.match_views(exp) if isinstance(exp, core.PairCorrespondence)
                              else (None, None))
                return (
                    _status("ok", f"Done: {method} on {model_label}."),
                    ov1, ov2, text,
                    gr.update(value=table, visible=faith is not None),
                    gr.update(value=plot, visible=faith is not None),
                    [str(p) for p in paths],
                    gr.update(visible=pair_views[0] is not None), *pair_views,
                    exp if pair_views[0] is not None else None,
                )
            except Exception as err:  # noqa: BLE001 - every error goes to the page
                message = f"could not explain: {_user_message(err)}"
                gr.Warning(message)
                return (_status("error", message), None, None, "",
                        gr.update(value="", visible=False), gr.update(value=None, visible=False),
                        None, gr.update(visible=False), None, None, None)

        def on_match(exp, image: int, evt):
            """A click on one image of the correspondence views: both views redrawn."""
            try:
                if exp is None:
                    raise DemoError("explain the pair with a correspondence method first")
                point = core.click_point(evt.index, exp)
                return (*core.match_views(exp, point, image=image),
                        _status("ok", f"Matches of image {image}, pixel (row {point[0]}, "
                                      f"col {point[1]})."))
            except Exception as err:  # noqa: BLE001 - every error goes to the page
                message = f"could not show the matches: {_user_message(err)}"
                gr.Warning(message)
                return gr.update(), gr.update(), _status("error", message)

        def on_compare(*values):
            common = values[: len(common_inputs)]
            chosen = values[len(common_inputs)] or []
            widget_values = values[len(common_inputs) + 1:]
            try:
                chosen = [m for m in method_names if m in chosen]
                if not chosen:
                    raise DemoError("choose at least one method to compare")
                params = {m: params_for(m, widget_values) for m in chosen}
                with compute_lock:
                    model, model_label, x1, x2, sources = prepare(common)
                    runs = [core.run_pair(model, x1, x2, m, params[m], sources) for m in chosen]
                picture = core.compare_grid(runs, model_label)
                path = core.save_image(picture, core.new_run_dir(runs_root) / "compare.png")
                total = sum(r.seconds for r in runs)
                return (_status("ok", f"Done: {len(runs)} methods in {total:.2f} s."),
                        picture, str(path))
            except Exception as err:  # noqa: BLE001 - every error goes to the page
                message = f"could not compare: {_user_message(err)}"
                gr.Warning(message)
                return _status("error", message), None, None

        run_btn.click(on_explain, [*common_inputs, method_dd, want_metrics, *widget_inputs],
                      [status, out1, out2, summary, metrics_md, curves, files,
                       match_box, match1, match2, match_state],
                      preprocess=False, concurrency_limit=concurrency, api_name="explain")
        for which, view in ((1, match1), (2, match2)):
            def on_click(exp, evt, which=which):
                return on_match(exp, which, evt)

            on_click.__annotations__ = {"evt": gr.SelectData}  # Gradio passes the click here
            view.select(on_click, match_state, [match1, match2, status],
                        concurrency_limit=concurrency, api_visibility="private")
        compare_btn.click(on_compare, [*common_inputs, compare_methods, *widget_inputs],
                          [compare_status, grid, grid_file], preprocess=False,
                          concurrency_limit=concurrency, api_name="compare")

        def on_upload(payload, which):
            try:
                read_image(payload, which)
                return _status("info", f"{which}: ready.")
            except Exception as err:  # noqa: BLE001 - shown in the page
                message = _user_message(err)
                gr.Warning(message)
                return _status("error", message)

        img1.upload(lambda p: on_upload(p, "image 1"), img1, status, preprocess=False,
                    concurrency_limit=concurrency, api_visibility="private")
        img2.upload(lambda p: on_upload(p, "image 2"), img2, status, preprocess=False,
                    concurrency_limit=concurrency, api_visibility="private")
        mode.change(lambda m: (gr.update(visible=m == MODE_AUG), gr.update(visible=m != MODE_AUG)),
                    mode, [aug_row, img2], queue=False, api_visibility="private")

        def on_family(fam):
            lo, hi = core.FAMILIES.get(fam, core.FAMILIES[families[0]])[1]
            return gr.update(minimum=lo, maximum=hi, value=(lo + hi) / 2)

        aug_family.change(on_family, aug_family, aug_strength, queue=False,
                          api_visibility="private")
        method_dd.change(lambda m: [gr.update(visible=n == m) for n in method_names], method_dd,
                         [param_groups[n] for n in method_names], queue=False,
                         api_visibility="private")

    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app._pairlens_examples_root = examples_root  # read by serve()
    return app


def _widget(gr, spec: core.ParamSpec, method: str):
    label = spec.name.replace("_", " ")
    info = spec.help or None
    elem_id = f"pl-param-{method}-{spec.name}"
    if spec.kind == "bool":
        return gr.Checkbox(bool(spec.default), label=label, info=info, elem_id=elem_id)
    if spec.kind == "choice":
        return gr.Dropdown(list(spec.choices), value=spec.default, label=label, info=info,
                           elem_id=elem_id)
    if spec.kind in ("int", "float") and spec.default is not None:
        kw: dict[str, Any] = {"precision": 0} if spec.kind == "int" else {}
        if spec.bounds:
            kw.update(minimum=spec.bounds[0], maximum=spec.bounds[1])
        return gr.Number(spec.default, label=label, info=info, elem_id=elem_id,
                         step=1 if spec.kind == "int" else 0.05, **kw)
    placeholder = "auto" if spec.default is None else None
    return gr.Textbox(str(spec.display_default()), label=label, info=info,
                      placeholder=placeholder, elem_id=elem_id)


def _name(payload: Any, default: str) -> str:
    if isinstance(payload, dict):
        return str(payload.get("orig_name") or default)
    if isinstance(payload, str):
        return Path(payload).name
    return default


def _user_message(err: BaseException) -> str:
    """One line for the page; unexpected errors are logged with their traceback."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ValueError):  # DemoError, ImageError and the library's own checks
        return text
    log.error("demo request failed:\n%s", traceback.format_exc())
    return f"the model or method failed ({type(err).__name__}: {text})"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(
    choices: Sequence[ModelChoice],
    host: str = "127.0.0.1",
    port: int | None = 7860,
    examples: bool = True,
    max_upload_mb: float = 10.0,
    concurrency: int = 1,
    queue_size: int = 16,
    tmp_root: Path | None = None,
    block: bool = True,
):
    """Build and launch the page; blocks until interrupted unless ``block=False`` (then returns
    the running app; call ``app.close()``). The temporary folder is removed when it stops."""
    if block and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly (and clean up) on SIGTERM
    own_tmp = tmp_root is None
    root = Path(tempfile.mkdtemp(prefix="pairlens-demo-")) if own_tmp else Path(tmp_root)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    try:
        app = build_app(choices, root, examples=examples, max_upload_bytes=max_bytes,
                        concurrency=concurrency, queue_size=queue_size)
        gr = _import_gradio(root)
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            show_error=True,
            max_file_size=max_bytes,
            allowed_paths=[str(app._pairlens_examples_root)],
            prevent_thread_lock=not block,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            css=CSS,
            theme=gr.themes.Soft(),
            quiet=False,
        )
    except BaseException:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
        raise
    if block:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
        return None
    return app
