"""The trainer's *shared-object* pair mode, and how to check what a composites model learned.

In SimCLR the positives are two augmented views of one image. Here (``pairlens train simclr --data
composites``, :func:`train_shared_object`) the positives are two **scenes that share an object**
(:func:`pairlens.data.composites.shared_object_batch`): per step, ``B`` anchor objects are drawn
by the trainer (fresh permutations of the 75 objects), each gets two freshly drawn scenes
(anchor + ``k`` distractors, different positions, scales, augmentations and backgrounds), every
distractor of the batch is distinct and none is an anchor. The loss is
:func:`~pairlens.training.losses.supcon_loss` with label = anchor id, i.e. NT-Xent in which the
only positive of a scene is the other scene with the same anchor, and no negative shares an object
with it. All random numbers come from the trainer's generator, so runs are exact and resumable.

:func:`removal_drops` measures that a model's similarity depends on the shared object: for each
benchmark pair, the similarity after re-rendering one scene **without the shared object** is
compared with the similarity after removing **one distractor** instead (the background shows
through in both cases).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.data import composites
from pairlens.models.bundled import ContrastiveNet, get_architecture
from pairlens.training.losses import supcon_loss
from pairlens.training.simclr import ContrastiveTrainer, EpochHook, TrainConfig, fit_and_bundle

MODE = "shared-object"


class SharedObjectLoss:
    """Batch loss of the shared-object mode: the batch's ``indices`` are the anchor object ids.

    Args:
        size: scene side in pixels (the architecture's input size).
        temperature: τ of NT-Xent.
        n_distractors: distractors per scene (``k``).
    """

    def __init__(self, size: int, temperature: float,
                 n_distractors: int = composites.DEFAULT_DISTRACTORS):
        self.size = size
        self.temperature = temperature
        self.n_distractors = n_distractors

    def __call__(
        self, trainer: ContrastiveTrainer, images: Tensor, labels: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        anchors = indices.cpu().tolist()
        v1, v2 = composites.shared_object_batch(anchors, trainer.generator, self.size,
                                                self.n_distractors)
        x = trainer.normalize(torch.cat([v1, v2]).to(trainer.device))
        _, z = trainer.net(x)
        z = F.normalize(z, dim=1)
        loss = supcon_loss(z, indices.repeat(2), temperature=self.temperature)
        with torch.no_grad():
            b = len(anchors)
            pos = (z[:b] * z[b:]).sum(dim=1).mean()
        return loss, {"pos_cosine": float(pos)}


def train_shared_object(
    arch: str,
    config: TrainConfig,
    n_distractors: int = composites.DEFAULT_DISTRACTORS,
    hooks: Sequence[EpochHook] = (),
    net: ContrastiveNet | None = None,
) -> tuple[ContrastiveNet, list[dict[str, Any]]]:
    """Train a :class:`ContrastiveNet` of architecture ``arch`` on composites scenes, positives =
    scenes sharing an object (see the module docstring).

    ``config.batch_size`` is the number of anchors (scenes per step: twice that);
    ``config.steps_per_epoch`` must be given (the scenes are unlimited). The trainer's "images"
    are the object thumbnails (:func:`pairlens.data.composites.thumbnails`), one per object, so an
    epoch's permutation runs over the objects. Writes ``model.pt`` to ``config.out`` like
    :func:`~pairlens.training.simclr.train_simclr`. Raises ``ValueError`` when the scene side is not
    square, when steps per epoch are missing or when a batch cannot have distinct distractors.
    """
    spec = get_architecture(arch)
    h, w = spec.input_size
    if h != w:
        raise ValueError(f"composites scenes are square; architecture {arch} takes {h}x{w}")
    if not config.steps_per_epoch:
        raise ValueError("the shared-object mode needs --steps-per-epoch (scenes are unlimited)")
    need = config.batch_size * (1 + 2 * n_distractors)
    if need > composites.N_OBJECTS:
        raise ValueError(
            f"--batch-size {config.batch_size} with {n_distractors} distractors per scene needs "
            f"{need} distinct objects; the composites library has {composites.N_OBJECTS} "
            f"(use --batch-size <= {composites.N_OBJECTS // (1 + 2 * n_distractors)})"
        )
    config.arch, config.mode, config.data = arch, MODE, "composites"
    config.augment = {"n_distractors": n_distractors, "scene_size": h}
    if net is None:
        torch.manual_seed(config.seed)
        net = spec.build()
    images = (composites.thumbnails(h) * 255).round().to(torch.uint8)
    labels = torch.arange(len(images))
    loss = SharedObjectLoss(h, config.temperature, n_distractors)
    trainer = ContrastiveTrainer(net, images, labels, config, loss, mean=spec.mean, std=spec.std,
                                 hooks=hooks)
    return net, fit_and_bundle(trainer, arch)


# ---------------------------------------------------------------------- what the model learned
@torch.no_grad()
def removal_drops(model: Any, n_pairs: int = 200, seed: int = 1, batch_size: int = 64
                  ) -> dict[str, Any]:
    """How much the model's similarity depends on the shared object of composites pairs.

    For pairs ``0..n_pairs-1`` of the benchmark with ``seed`` (at the model's input size), with
    ``s`` the similarity of the pair (``model.embedding_similarity``):

    * ``drop_shared``: ``s - s'`` where ``s'`` is the similarity after re-rendering one scene
      without the shared object (done for each scene, the other one whole; the two drops averaged);
    * ``drop_distractor``: the same with the first distractor of that scene (in paste order)
      removed instead;
    * ``shared_larger``: fraction of (pair, scene) cases where removing the shared object lowers the
      similarity more than removing the distractor;
    * ``similarity_pairs`` / ``similarity_unrelated``: mean similarity of the pairs and of
      unrelated scenes (scene 1 of pair ``i`` with scene 2 of pair ``i+1``, which never share the
      shared object; they may share a distractor by chance);
    * ``partner_auc``: for scene 1 of each pair, the fraction of the other pairs' scenes 2 that
      share **no** object with it and are less similar to it than its partner (ties count half),
      averaged over pairs: 0.5 is chance, 1 means the partner always wins.

    Returns floats, plus ``per_pair`` tensors ``(n_pairs, 2)`` of both drops for intervals.
    """
    if n_pairs < 2:
        raise ValueError("removal_drops needs at least 2 pairs")
    size = model.input_size[0]
    if model.input_size[1] != size:
        raise ValueError("composites scenes are square; the model's input size is not")
    rows: dict[str, list[Tensor]] = {k: [] for k in ("x1", "x2", "x1s", "x2s", "x1d", "x2d")}
    objects1, objects2 = [], []
    for i in range(n_pairs):
        pair = composites.composite_pair(i, seed, size)
        objects1.append({p.object_id for p in pair.layout1.objects})
        objects2.append({p.object_id for p in pair.layout2.objects})
        s1, s2 = composites.render(pair.layout1), composites.render(pair.layout2)
        rows["x1"].append(s1.image)
        rows["x2"].append(s2.image)
        rows["x1s"].append(composites.render(pair.layout1.without([pair.shared])).image)
        rows["x2s"].append(composites.render(pair.layout2.without([pair.shared])).image)
        rows["x1d"].append(composites.render(pair.layout1.without(pair.distractors(1)[:1])).image)
        rows["x2d"].append(composites.render(pair.layout2.without(pair.distractors(2)[:1])).image)
    z = {}
    for k, imgs in rows.items():
        x = model.normalize(torch.stack(imgs).to(model.device))
        z[k] = torch.cat([model.embed(x[j : j + batch_size]) for j in range(0, len(x), batch_size)])
    sim = model.embedding_similarity
    s = sim(z["x1"], z["x2"])
    shared = torch.stack([s - sim(z["x1s"], z["x2"]), s - sim(z["x1"], z["x2s"])], dim=1)
    distractor = torch.stack([s - sim(z["x1d"], z["x2"]), s - sim(z["x1"], z["x2d"])], dim=1)
    unrelated = sim(z["x1"], z["x2"].roll(-1, dims=0))
    n = n_pairs
    all_sims = torch.stack([sim(z["x1"][i : i + 1].expand(n, -1), z["x2"])
                            for i in range(n)]).cpu()
    aucs = []
    for i in range(n):
        others = [j for j in range(n) if j != i and not objects1[i] & objects2[j]]
        if others:
            d = all_sims[i, i] - all_sims[i, others]
            aucs.append(float(((d > 0).float() + 0.5 * (d == 0).float()).mean()))
    return {
        "n_pairs": n_pairs,
        "seed": seed,
        "similarity_pairs": float(s.mean()),
        "similarity_unrelated": float(unrelated.mean()),
        "drop_shared": float(shared.mean()),
        "drop_distractor": float(distractor.mean()),
        "shared_larger": float((shared > distractor).float().mean()),
        "partner_auc": sum(aucs) / len(aucs) if aucs else math.nan,
        "per_pair": {"drop_shared": shared.cpu(), "drop_distractor": distractor.cpu()},
    }
