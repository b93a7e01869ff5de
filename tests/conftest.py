import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread avoids scheduling waits on a shared 2-core machine


@pytest.fixture(scope="session")
def minilm():
    """The real bundled text encoder (loaded once per test session)."""
    from openimagen.text import MiniLMEncoder

    return MiniLMEncoder()
