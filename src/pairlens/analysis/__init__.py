"""Analyses of contrastive models (seed 000 §VI and appendix; seed 002 §4.2), one module each:

* :mod:`~pairlens.analysis.augmentations`: augmentation dissection (Table VII, Figs. 4-6);
* :mod:`~pairlens.analysis.inversion`: feature inversion (appendix, Fig. 19) and colour statistics;
* :mod:`~pairlens.analysis.texture`: the shared-texture probe (§VI-1);
* :mod:`~pairlens.analysis.harmful`: the blur-and-blackening probe (§VI-2);
* :mod:`~pairlens.analysis.cocoa_augmentations`: COCOA on augmentations (seed 002 §4.2).

Each has one function with an output folder that resumes, a table and a figure; ``pairlens
analyze ANALYSIS`` runs it from the command line.
"""
