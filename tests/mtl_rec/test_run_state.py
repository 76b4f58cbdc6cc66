"""RunProgress: what a checkpoint records as this epoch's consumed rows."""

from types import SimpleNamespace

import numpy as np
import torch

from mtl_rec.data_position import DataPosition, encode_positions
from mtl_rec.run_state import RunProgress


def _batch(file_index: int, rows: range) -> SimpleNamespace:
    return SimpleNamespace(
        positions=torch.from_numpy(encode_positions(file_index, np.arange(rows.start, rows.stop)))
    )


def test_the_next_epochs_consumed_rows_hold_none_of_the_last_epochs_tail():
    """Rows trained after the last mid-epoch checkpoint belong to the epoch that ended: folded into
    the next epoch's position, the read tasks would skip them in that epoch (a checkpoint taken
    right after end_epoch, as with train.checkpoint_every, gathers what is pending)."""
    run = RunProgress(DataPosition(["a.parquet"]), epochs=2)
    run.record(_batch(0, range(0, 10)), 10)
    run._gather_consumed()  # a mid-epoch checkpoint: rows 0..9 of epoch 0
    run.record(_batch(0, range(10, 16)), 6)  # the epoch's tail, after that checkpoint
    run.end_epoch()
    run._gather_consumed()  # the checkpoint after the epoch
    assert run.position.epoch == 1 and run.position.consumed_rows == 0
    run.record(_batch(0, range(0, 4)), 4)  # the next epoch starts again from row 0: no repeat
    run._gather_consumed()
    assert run.position.consumed.tolist() == [[0, 4]] and run.position.rows == 20
