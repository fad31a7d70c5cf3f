"""Data and model for the federated demo, tests and bench: scikit-learn's bundled handwritten
digits (1,797 real 8x8 images, no download) split non-IID over the nodes, each holding two or
three of the ten classes, with a held-out test split; a small MLP trained with plain SGD.

Everything is seeded: the same seed gives the same split, initial weights and batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Pixel values in the bundled images go from 0 to 16.
PIXEL_MAX = 16.0
HIDDEN = 64
CLASSES = 10
FEATURES = 64


@dataclass(frozen=True)
class Shard:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]

    @property
    def classes(self) -> list[int]:
        return sorted({int(c) for c in self.y})


def load(seed: int = 0, test_fraction: float = 0.25) -> tuple[Shard, Shard]:
    """(train, test), split per class so both hold every class."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    data = load_digits()
    x = (data.data / PIXEL_MAX).astype(np.float32)
    y = data.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Shard(xtr, ytr), Shard(xte, yte)


def split_non_iid(train: Shard, nodes: int) -> list[Shard]:
    """Each node gets whole classes: class ``c`` goes to node ``c mod nodes`` (with 4 nodes:
    three, three, two and two classes)."""
    if not 1 <= nodes <= CLASSES:
        raise ValueError(f"nodes must be 1..{CLASSES}")
    out = []
    for i in range(nodes):
        mask = np.isin(train.y, [c for c in range(CLASSES) if c % nodes == i])
        out.append(Shard(train.x[mask], train.y[mask]))
    return out


def union(shards: list[Shard]) -> Shard:
    return Shard(np.concatenate([s.x for s in shards]), np.concatenate([s.y for s in shards]))


def arch_config() -> dict[str, object]:
    """The ``mlp`` architecture's config of the demo model (see inference.architectures)."""
    return {"in": FEATURES, "hidden": [HIDDEN], "out": CLASSES}


def make_model(seed: int) -> object:
    """The registry's ``mlp`` (64-64-10), initialised from ``seed``: the same on every node,
    and servable as published safetensors without any code of ours travelling."""
    import torch

    from p2pagent.inference.architectures import MLP

    torch.manual_seed(seed)
    return MLP([FEATURES, HIDDEN, CLASSES])


def params_of(model: object) -> dict[str, npt.NDArray[np.float32]]:
    import torch

    assert isinstance(model, torch.nn.Module)
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_params(model: object, params: Mapping[str, npt.NDArray[np.generic]]) -> None:
    import torch

    assert isinstance(model, torch.nn.Module)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})


def train_epochs(
    model: object, shard: Shard, epochs: float, seed: int, lr: float = 0.1, batch: int = 32
) -> None:
    """``epochs`` passes (fractions allowed) of mini-batch SGD over ``shard``."""
    import torch

    assert isinstance(model, torch.nn.Module)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = max(1, round(epochs * len(shard.y) / batch))
    order = np.concatenate([rng.permutation(len(shard.y)) for _ in range(int(np.ceil(epochs)) + 1)])
    x, y = torch.from_numpy(shard.x), torch.from_numpy(shard.y)
    model.train()
    for s in range(steps):
        idx = torch.from_numpy(order[s * batch : (s + 1) * batch])
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()


def accuracy(model: object, shard: Shard) -> float:
    import torch

    assert isinstance(model, torch.nn.Module)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(shard.x)).argmax(dim=1).numpy()
    return float((pred == shard.y).mean())
