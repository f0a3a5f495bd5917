"""Shared by every test file."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Run the suite on one thread. The models here are tiny: their matmuls are fastest on one
    thread, and on a busy 2-core machine OpenMP's barriers make two threads 10-100x slower. The
    CLI subprocesses and torchrun workers get OMP_NUM_THREADS=1 too, so in-process reference
    runs round their floats exactly as the runs they are compared with (bit-identical resume)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
