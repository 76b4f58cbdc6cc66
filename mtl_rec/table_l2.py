"""train.table_l2: a frequency-scaled L2 on the embedding rows a batch looks up, from the first step.

DIN's mini-batch aware regularisation (Zhou et al., "Deep Interest Network for Click-Through Rate
Prediction", KDD 2018, section 4.1): a full L2 over a table of millions of rows touches every row on
every step; instead each row is penalised only where a batch looks it up, divided by how often its
id occurs in the training rows, so that over one pass every row receives the same penalty:

    per-row term r_m = strength * sum_f ||e_f(id_mf)||^2 / n(id_mf)      over the single-hot features f

Averaged over the global batch (mtl_rec.losses.auxiliary_losses), summed over the S = N / G steps of
a pass, row j is looked up n_j times and collects strength / G * ||e_j||^2 in all: the objective of
the pass is (mean loss) + strength / N * sum_j ||e_j||^2, the L2 of a logistic regression (sklearn's
C = 1 / (2 strength)), whose weight a rare id cannot escape by being rare. A plain weight decay of
the rows a batch touches decays a frequent id once per visit and the memorised rare ids least.

Only single-hot features are penalised: a multi-hot feature's pooled vector is a sum or mean of
rows, not a row. Rows reached through list features alone (none in the presets: recent_categories
shares the category table) are not regularised, and their occurrences are not counted.

Example::

    >>> counts = all_reduce_counts(count_table_rows(batches, spec))   # {table: [num_embeddings]}
    >>> l2 = FrequencyL2(spec, counts, strength=3.0)
    >>> outputs.aux["table_l2"] = l2(outputs.pooled, batch.sparse)     # [B]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torchrec import KeyedJaggedTensor

from mtl_rec.batch import Batch
from mtl_rec.config.features import FeatureSpec
from mtl_rec.distributed import all_reduce_sum


def _single_hot(spec: FeatureSpec) -> list[tuple[str, str, int, int]]:
    """(feature, table, column offset in the pooled [B, sum_k D_k], dim) of every single-hot feature."""
    features, offset = [], 0
    for feature in spec.sparse:
        dim = spec.tables[feature.table].dim
        if not feature.multi_hot:
            features.append((feature.name, feature.table, offset, dim))
        offset += dim
    return features


def count_table_rows(batches: Iterable[Batch], spec: FeatureSpec) -> dict[str, Tensor]:
    """{table: [num_embeddings] int64}: how often each row is looked up by a single-hot feature in
    `batches` (this rank's rows; all_reduce_counts sums the ranks)."""
    features = _single_hot(spec)
    sizes = {table: spec.tables[table].num_embeddings for _, table, _, _ in features}
    counts = {table: torch.zeros(rows, dtype=torch.int64) for table, rows in sizes.items()}
    for batch in batches:
        for name, table, _, _ in features:
            ids = batch.sparse[name].values().cpu()  # [R]: the ids of the rows that have a value
            counts[table].index_add_(0, ids, torch.ones_like(ids))  # [V] += 1 at each of [R] ids: O(R)
    return counts


def all_reduce_counts(counts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Collective: every rank's counts summed, in table order (the same on every rank)."""
    return {table: all_reduce_sum(counts[table]) for table in sorted(counts)}


class FrequencyL2:
    """(pooled [B, sum_k D_k] in spec feature order, the batch's KJT) -> per-row penalty [B].

    counts:   {table: [num_embeddings]} occurrences of each row over every rank's training rows
    strength: the L2 coefficient on the scale of one pass's mean loss (see the module docstring)
    """

    def __init__(self, spec: FeatureSpec, counts: dict[str, Tensor], strength: float) -> None:
        self.features = _single_hot(spec)
        # 1 / n per row; a row no training row looks up is never in a training batch
        self.inverse = {table: 1.0 / counts[table].clamp(min=1).double() for table in counts}
        self.strength = strength

    def to(self, device: torch.device) -> FrequencyL2:
        self.inverse = {table: inverse.to(device) for table, inverse in self.inverse.items()}
        return self

    def __call__(self, pooled: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        term = pooled.new_zeros(pooled.shape[0])  # [B]
        for name, table, offset, dim in self.features:
            jagged = sparse[name]
            ids = jagged.values()  # [R]: one id per row that has a value (single-hot)
            if ids.numel() == 0:
                continue
            # each row's own id: at its offset; a row with no value pools to 0 (its squared norm
            # and gradient are 0), so whichever id its clamped offset reads is harmless
            first = jagged.offsets()[:-1].clamp(max=ids.numel() - 1)  # [B]
            weights = self.inverse[table][ids[first]].to(pooled.dtype)  # [V] gathered -> [B]
            squared = pooled[:, offset : offset + dim].pow(2).sum(dim=1)  # [B, D] -> [B]
            term = term + squared * weights  # [B]
        return self.strength * term  # [B]
