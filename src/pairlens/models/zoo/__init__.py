"""Published self-supervised and CLIP checkpoints as registered models.

One module per family; importing this package registers every entry with
:func:`pairlens.models.registry.register_model`. Optional dependencies (open_clip, timm) are
imported only when such a model is built.
"""

from pairlens.models.zoo import barlow, clip, dino, generic, mocov3, simclrv2, simsiam  # noqa: F401
