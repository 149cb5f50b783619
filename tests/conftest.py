from pathlib import Path

import pytest
import torch

torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The whole tiny teacher zoo (seed 0), built once per test session: ``{name: folder}`` (about 5 s)."""
    from sidrepro.teachers.zoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"), seed=0)
