"""Plain training and evaluation loops shared by fine-tuning, QAT, distillation and exits.

``fit`` takes a loss function ``loss_fn(model, x, y) -> scalar`` so every recovery
method (plain CE, distillation, exit heads) reuses one seeded loop with progress.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgec.compiler.data import Split



def batches(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0):
    """Yield (x, y) torch tensors in batches (a seeded shuffle when asked)."""
    order = np.random.default_rng(seed).permutation(len(split)) if shuffle else np.arange(len(split))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield torch.from_numpy(split.x[idx]), torch.from_numpy(split.y[idx])


def cross_entropy(model, x, y):
    """The default loss: CE of the model's (first) output."""
    out = model(x)
    return nn.functional.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, y)


def fit(model: nn.Module, train: Split, epochs: int = 3, lr: float = 1e-3, batch_size: int = 64,
        loss_fn=cross_entropy, seed: int = 0, quiet: bool = False, desc: str = "train",
        weight_decay: float = 0.0) -> list:
    """Train ``model`` in place with Adam (cosine LR); returns the mean loss per epoch."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                           weight_decay=weight_decay)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    history = []
    bar = tqdm(total=steps, desc=desc, disable=quiet, leave=False)
    for epoch in range(epochs):
        model.train()
        losses = []
        for x, y in batches(train, batch_size, shuffle=True, seed=seed + epoch):
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}")
        history.append(float(np.mean(losses)))
    bar.close()
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 256, output: int = 0) -> np.ndarray:
    """Logits of ``model`` over ``split`` (output ``output`` of multi-output models)."""
    model.eval()
    outs = []
    for x, _ in batches(split, batch_size):
        out = model(x)
        outs.append((out[output] if isinstance(out, (tuple, list)) else out).numpy())
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((np.argmax(logits, axis=1) == labels).mean() * 100.0)


def evaluate(model: nn.Module, split: Split, output: int = 0) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``split``."""
    return accuracy(predict(model, split, output=output), split.y)
