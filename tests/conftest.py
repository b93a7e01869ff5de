import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def minilm():
    """The real bundled text encoder (loaded once per test session)."""
    from openimagen.text import MiniLMEncoder

    return MiniLMEncoder()
