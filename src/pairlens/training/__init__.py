"""Contrastive training: losses (SupCon / ExConB eq. 2-3, NT-Xent), SimCLR augmentations and the
resumable trainer (:mod:`pairlens.training.simclr`)."""

from pairlens.training.losses import nt_xent, supcon_loss

__all__ = ["nt_xent", "supcon_loss"]
