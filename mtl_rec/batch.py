"""The training batch: what the pipeline hands the model.

Batch implements TorchRec's Pipelineable (to / record_stream / pin_memory), so it can go through
TrainPipelineSparseDist unchanged on CUDA.

Example::

    >>> kjt = KeyedJaggedTensor.from_lengths_sync(
    ...     keys=["user_id", "recent_categories"], values=torch.tensor([7, 9, 3, 4]),
    ...     lengths=torch.tensor([1, 1, 2, 0]))          # B = 2; the 2nd row's list is empty
    >>> batch = Batch(sparse=kjt, dense=torch.zeros(2, 13), labels={"click": torch.tensor([1.0, 0.0])},
    ...               masks={"all": torch.tensor([True, True])}, ids=torch.tensor([11, 12]))
    >>> batch.batch_size
    2
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


def _map(tensors: dict[str, torch.Tensor], fn) -> dict[str, torch.Tensor]:
    return {k: fn(v) for k, v in tensors.items()}


@dataclass
class Batch(Pipelineable):
    """One batch of B impressions.

    sparse: KeyedJaggedTensor, one key per sparse feature in spec order; key-major values/lengths [B per key]
    dense:  [B, D] float32, scaled dense features in spec order
    labels: {label: [B] float32 in {0, 1}}
    masks:  {sample space: [B] bool}, which rows each space contains
    ids:    [B] int64 request ids (exactly-once accounting; never a model input)
    meta:   {name: [B]} columns for metrics and reports only (group key, ts, _truth_ probabilities)
    positions: [B] int64 where each row sits in the logs (mtl_rec.data_position), or None; kept on the
            CPU, for the data position a checkpoint records
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    ids: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)
    positions: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        move = lambda t: t.to(device=device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            dense=move(self.dense),
            labels=_map(self.labels, move),
            masks=_map(self.masks, move),
            ids=move(self.ids),
            meta=_map(self.meta, move),
            positions=self.positions,
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.sparse.record_stream(stream)
        for t in (self.dense, self.ids, *self.labels.values(), *self.masks.values(), *self.meta.values()):
            t.record_stream(stream)

    def pin_memory(self) -> Batch:
        pin = lambda t: t.pin_memory()  # noqa: E731
        return Batch(
            sparse=self.sparse.pin_memory(),
            dense=pin(self.dense),
            labels=_map(self.labels, pin),
            masks=_map(self.masks, pin),
            ids=pin(self.ids),
            meta=_map(self.meta, pin),
            positions=self.positions,
        )
