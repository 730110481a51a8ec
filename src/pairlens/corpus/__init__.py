"""COCOA (seed 002): label-free, corpus and contrastive-corpus targets, CLIP text corpora, and the
§4.1 corpus-majority evaluation.

:mod:`pairlens.corpus.targets` holds the scalar targets that :func:`pairlens.attribute` explains;
:mod:`pairlens.corpus.evaluation` holds the §4.1 evaluation and its SQLite records.
"""
