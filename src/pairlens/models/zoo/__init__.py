"""Published self-supervised and CLIP checkpoints as registered models.

One module per family; importing this package registers every entry with
:func:`pairlens.models.registry.register_model`. Optional dependencies (open_clip, timm,
transformers) are imported only when such a model is built.
"""

from pairlens.models.zoo import (  # noqa: F401
    barlow,
    clip,
    dino,
    generic,
    hf,
    mocov3,
    simclrv2,
    simsiam,
)
