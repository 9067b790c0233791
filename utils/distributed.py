"""Distributed data parallel (DDP) helpers and the epoch sampler: process-group set-up from torchrun,
rank helpers, object gathering, each epoch's item list (`epoch_permutation`, `epoch_fraction`,
`epoch_weighted_draws`), its sharding over ranks and the per-item seeding that makes data order and
augmentation independent of ranks, workers and resumption.

`torchrun --nproc_per_node=G script.py ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `init_distributed`
reads them and joins the group (NCCL on CUDA, gloo on CPU). A plain `python script.py` needs neither
torchrun nor a process group: every helper here then acts as the single process (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler, get_worker_info

from utils.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: `rank` of `world_size`, `local_rank` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def dist_env() -> DistInfo:
    """Rank, world size and local rank from the torchrun environment (1 process when unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def resolve_device(spec: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> a torch device. Under DDP each process uses cuda:LOCAL_RANK, or
    cuda:0 when its launcher gives each process one GPU of its own (CUDA_VISIBLE_DEVICES per rank)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not spec.startswith("cuda"):
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available (torch {torch.__version__})")
    count = torch.cuda.device_count()
    own = local_rank if count > 1 else 0  # the rank's GPU: cuda:LOCAL_RANK, or its only visible one
    if spec == "cuda":
        index = own if distributed else torch.cuda.current_device()
    else:
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"--device {spec!r}: expected cuda:N with an integer N") from None
        if distributed and index != own:
            raise ConfigError(f"--device {spec}: under torchrun each process uses cuda:LOCAL_RANK; "
                              "pass --device cuda and pick GPUs with CUDA_VISIBLE_DEVICES")
    if not 0 <= index < count:
        raise ConfigError(f"--device {spec}: only {count} CUDA device(s) visible"
                          + (f" to LOCAL_RANK {local_rank}" if distributed else ""))
    return torch.device("cuda", index)


def init_distributed(device: str = "auto", timeout_minutes: float = 60.0) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 and pick this process's device.

    Returns (DistInfo, device). Backend: NCCL for CUDA devices, gloo for CPU. A single process returns
    DistInfo() without creating a group. `timeout_minutes` bounds collective waits (long evaluations
    on rank 0 keep the others waiting at a barrier).
    """
    info = dist_env()
    dev = resolve_device(device, info.local_rank, info.distributed)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not info.distributed:
        return info, dev
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                rank=info.rank, world_size=info.world_size, **kwargs)
    return info, dev


def cleanup_distributed() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if is_distributed():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Gather a picklable object from every rank: returns [obj_rank0, obj_rank1, ...] on all ranks."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s object on every rank."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors, src: int = 0) -> None:
    """Overwrite each tensor in place with rank `src`'s copy (no-op for a single process)."""
    if is_distributed():
        for t in tensors:
            dist.broadcast(t, src=src)


def all_reduce_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of a list of floats over all ranks (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


# ----------------------------------------------------------------------------------------------------
# Epoch sampling
# ----------------------------------------------------------------------------------------------------


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the item at `position` of epoch `epoch`'s list (the same for any ranks / workers)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class ShardedEpochSampler(Sampler):
    """Batches of one epoch's sample, sharded over ranks.

    Every rank computes the same list `indices_fn(epoch, seed)`, pads it (repeating from its start) to a
    multiple of `world_size`, and takes `padded[rank::world_size]`; batches of `batch_size` are cut from
    that shard (a last incomplete batch is dropped). Each element yielded is a list of
    `(dataset_index, position, item_seed)` triples, `position` being the place in the epoch list and the
    seed a function of (seed, epoch, position) only, so augmentation is identical whatever the number
    of workers, and a resumed run can skip the first `start_batch` batches exactly. `max_batches`
    (0 = all) caps an epoch for quick runs.
    """

    def __init__(self, indices_fn: Callable[[int, int], Sequence[int]], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, max_batches: int = 0, dataset_len: int | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.indices_fn = indices_fn
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.max_batches = max_batches
        self.dataset_len = dataset_len
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple[int, list[tuple[int, int, int]]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_list(self) -> list[int]:
        """The whole epoch's dataset indices before sharding."""
        idx = [int(i) for i in self.indices_fn(self.epoch, self.seed)]
        if not idx:
            raise ConfigError(f"epoch {self.epoch} samples no training items (empty training set?)")
        if self.dataset_len is not None:
            bad = [i for i in idx if not 0 <= i < self.dataset_len]
            if bad:
                raise ConfigError(f"epoch_indices returned index {bad[0]} outside the dataset "
                                  f"(0..{self.dataset_len - 1})")
        return idx

    def shard(self) -> list[tuple[int, int, int]]:
        """This rank's (dataset_index, position, item_seed) triples for the current epoch."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        idx = self.epoch_list()
        total = -(-len(idx) // self.world_size) * self.world_size
        padded = (idx * (-(-total // len(idx))))[:total]
        positions = range(self.rank, total, self.world_size)
        shard = [(padded[p], p, sample_seed(self.seed, self.epoch, p)) for p in positions]
        self._cache = (self.epoch, shard)
        return shard

    def num_batches(self) -> int:
        n = len(self.shard()) // self.batch_size
        return min(n, self.max_batches) if self.max_batches > 0 else n

    def batch_indices(self, batch: int) -> list[int]:
        """Dataset indices of batch number `batch` of this rank's current epoch."""
        b = self.batch_size
        return [i for i, _, _ in self.shard()[batch * b:(batch + 1) * b]]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        shard, b = self.shard(), self.batch_size
        for k in range(self.start_batch, self.num_batches()):
            yield shard[k * b:(k + 1) * b]

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start_batch)


def epoch_permutation(n: int) -> Callable[[int, int], list[int]]:
    """Every item once per epoch, in a seeded random order."""
    def indices(epoch: int, seed: int) -> list[int]:
        return np.random.default_rng([seed, epoch]).permutation(n).tolist()

    return indices


def epoch_fraction(n: int, fraction: float) -> Callable[[int, int], list[int]]:
    """A random `fraction` of the items per epoch, without replacement (STMENet: a fifth)."""
    k = max(1, int(n * fraction))

    def indices(epoch: int, seed: int) -> list[int]:
        return np.random.default_rng([seed, epoch]).permutation(n)[:k].tolist()

    return indices


def epoch_weighted_draws(weights: Sequence[float], k: int) -> Callable[[int, int], list[int]]:
    """`k` items per epoch drawn with replacement, probability proportional to `weights` (DeepPro)."""
    p = np.asarray(weights, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or (p < 0).any() or p.sum() <= 0:
        raise ConfigError("epoch_weighted_draws needs a non-empty list of non-negative weights")
    p = p / p.sum()

    def indices(epoch: int, seed: int) -> list[int]:
        return np.random.default_rng([seed, epoch]).choice(len(p), size=k, replace=True, p=p).tolist()

    return indices


def seed_host_rngs(seed: int) -> None:
    """Seed python's `random`, numpy's global generator and torch's CPU generator (not CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)


def seed_worker(seed: int, epoch: int, rank: int, worker_id: int) -> None:
    """DataLoader worker_init_fn: seeds per (seed, epoch, worker, rank)."""
    seed_host_rngs(int(np.random.SeedSequence([seed, epoch, worker_id, rank]).generate_state(1)[0]))


class SeededItems(Dataset):
    """Loads the sampler's keys `(index, position, item_seed)`.

    A dataset with a method `epoch_item(index, position, seed)` gets the call directly (it derives its
    own randomness from `seed`, and may use `position`, e.g. for the parity of the item in the epoch).
    Otherwise `dataset[index]` runs with python's, numpy's and torch's global generators seeded by
    item_seed, so random augmentation does not depend on workers or on where an epoch was resumed; in
    the main process (workers = 0) the generators' states are restored afterwards.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._direct = getattr(dataset, "epoch_item", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        index, position, seed = key
        if self._direct is not None:
            return self._direct(index, position, seed)
        if get_worker_info() is not None:
            seed_host_rngs(seed)
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            seed_host_rngs(seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


__all__ = [
    "DistInfo", "SeededItems", "ShardedEpochSampler", "all_gather_object", "all_reduce_sum", "barrier",
    "broadcast_object", "broadcast_tensors", "cleanup_distributed", "dist_env", "epoch_fraction",
    "epoch_permutation", "epoch_weighted_draws", "get_rank", "get_world_size", "init_distributed",
    "is_distributed", "is_main_process", "resolve_device", "sample_seed", "seed_host_rngs", "seed_worker",
    "unwrap_model",
]
