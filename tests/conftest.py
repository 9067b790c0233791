"""Shared fixtures: the reference folder beside the project, small temporary datasets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    """`../shared/reference`; tests that need it skip with a clear reason where it is absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (the authors' files are not in this repo)")
    return REFERENCE


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests of small tensors: faster, and much faster on a shared 2-core machine
    (two threads stalled these runs up to 5x). Use: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def bench_module(name: str):
    """`bench/<name>.py` as a module, imported as the script runs it (its folder on the path for its sibling
    imports) and kept for the session under `bench_<name>`."""
    key = f"bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    folder = str(ROOT / "bench")
    spec = importlib.util.spec_from_file_location(key, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses look their module up there while the file runs
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    finally:
        sys.path.remove(folder)
    return module


def synthetic_set(factory, name: str, **options) -> Path:
    """A synthetic dataset (utils.synth options, e.g. format="nudt", num_seqs=(4, 1, 2)) written into a
    fresh temporary folder `name` of `factory` (pytest's tmp_path_factory); returns its root."""
    from utils.synth import SynthConfig, generate

    root = factory.mktemp(name)
    generate(SynthConfig(out=str(root), **options))
    return root
