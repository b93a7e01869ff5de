import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: with 2 threads on a shared 2-core machine every op waits for a descheduled
    # worker (~7 ms per op); one thread is several times faster here.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
