import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_intra_op_thread():
    # These tensors are tiny: intra-op threads buy nothing, and on a 2-core machine shared with other
    # jobs OpenMP's spinning workers made this package 5x slower (19 s instead of 4 s).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
