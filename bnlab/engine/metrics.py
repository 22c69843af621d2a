"""What a chunk measures: one row per probe, with a leading member axis."""

from __future__ import annotations

import jax
import numpy as np
from flax import struct

Array = jax.Array


@struct.dataclass
class Metrics:
    """What a chunk measures, leading axes (members, probes): one row per probe.

    ``step`` (probes,) is the steps done at each probe; ``loss``/``acc`` (M, P, every)
    the training loss and accuracy of every step; ``lr`` (M, P) the learning rate at
    the probe; ``layers``, ``acts`` and ``ics`` are ``{name: {stat: (M, P)}}`` (per
    layer parameter statistics; activation statistics per site, None when probes are
    computed elsewhere and not yet attached; gradient-ICS and landscape measures,
    None when off, valid where ``ics_due``); ``sharpness`` (M, P) the top Hessian
    eigenvalue (None when off, valid where ``sharpness_due``).
    """

    step: Array
    loss: Array | None
    acc: Array | None
    lr: Array | None
    layers: dict
    acts: dict | None = None
    ics: dict | None = None
    ics_due: Array | None = None
    sharpness: Array | None = None
    sharpness_due: Array | None = None

    def member(self, m: int) -> Metrics:
        """Member ``m``'s measurements (host arrays), the member axis dropped."""
        pick = lambda t: None if t is None else jax.tree.map(lambda a: np.asarray(a)[m], t)  # noqa: E731
        return self.replace(
            step=np.asarray(self.step), loss=pick(self.loss), acc=pick(self.acc),
            lr=pick(self.lr), layers=pick(self.layers), acts=pick(self.acts),
            ics=pick(self.ics), ics_due=None if self.ics_due is None else np.asarray(self.ics_due),
            sharpness=pick(self.sharpness),
            sharpness_due=None if self.sharpness_due is None else np.asarray(self.sharpness_due),
        )  # fmt: skip
