"""The web demo (``pairlens demo``): explore pair explanations in the browser.

:mod:`pairlens.demo.core` holds the logic (models, parameters, explanations, metrics, figures)
and imports no web framework; :mod:`pairlens.demo.app` builds the Gradio page on top of it and
imports Gradio only when the page is built, so ``pairlens --help`` works without the extra
``pairlens[demo]``.
"""
