"""Analyses of contrastive models (seed 000 §VI and appendix; seed 002 §4.2), one module each:

* :mod:`~pairlens.analysis.augmentations`: augmentation dissection (Table VII, Figs. 4-6);
* :mod:`~pairlens.analysis.inversion`: feature inversion (appendix, Fig. 19) and colour statistics;
* :mod:`~pairlens.analysis.texture`: the shared-texture probe (§VI-1);
* :mod:`~pairlens.analysis.harmful`: the blur-and-blackening probe (§VI-2);
* :mod:`~pairlens.analysis.cocoa_augmentations`: COCOA on augmentations (seed 002 §4.2).

Each has one function with an output folder that resumes, a table and a figure; ``pairlens
analyze ANALYSIS`` runs it from the command line.
"""

# torch-free constants, shared with the command line's help

#: the paper's feature-inversion settings (seed 000, appendix)
INVERSION_PAPER_SETTINGS: dict[str, float] = {
    "steps": 200, "lr": 1e4, "momentum": 0.9, "lr_step": 50, "lr_gamma": 0.1,
    "init_std": 0.1, "tv_weight": 1e-8, "tv_beta": 2.0, "alpha": 6.0, "alpha_weight": 1e-7,
}
#: default methods of the texture and harmful-augmentation probes
TEXTURE_METHODS = "interaction-cam,grad-cam,input-x-gradient,conditional-occlusion,random"
HARMFUL_METHODS = "interaction-cam,grad-cam,random"
