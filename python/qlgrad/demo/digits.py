"""The digit task the demo fine-tunes on, its classifier, and the training loop.

Scikit-learn's bundled 8x8 handwritten digits (no download), and a shifted task: the same
digits rotated, with noise. The examples start from the same classifier.
"""

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

HIDDEN_FEATURES = 256
BATCH_SIZE = 64
LEARNING_RATE = 1e-2
PRETRAINING_STEPS = 400
TEST_DIGITS = 500
SHIFT_DEGREES = 40.0
SHIFT_NOISE = 0.1


@dataclass
class DigitTasks:
    """The digits as flat vectors in [0, 1], one fixed train/test split, and the shifted task.

    The shifted task holds the same digits rotated by ``SHIFT_DEGREES`` with Gaussian
    noise added (std ``SHIFT_NOISE``); labels are shared.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    shifted_train_images: torch.Tensor
    shifted_test_images: torch.Tensor


def load_digit_tasks(seed: int) -> DigitTasks:
    """Scikit-learn's bundled digits (no download), split and shifted reproducibly from ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits data set comes with scikit-learn: pip install 'qlgrad[demo]'") from error
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(seed)
    shifted = shift_digits(images, generator)
    order = torch.randperm(len(labels), generator=generator)
    test, train = order[:TEST_DIGITS], order[TEST_DIGITS:]
    return DigitTasks(
        train_images=images[train].flatten(1),
        train_labels=labels[train],
        test_images=images[test].flatten(1),
        test_labels=labels[test],
        shifted_train_images=shifted[train].flatten(1),
        shifted_test_images=shifted[test].flatten(1),
    )


def shift_digits(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``images`` ``[n, 8, 8]`` rotated by ``SHIFT_DEGREES`` about their centre, with noise, clamped to [0, 1]."""
    angle = math.radians(SHIFT_DEGREES)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
    batch = images.unsqueeze(1)
    grid = F.affine_grid(rotation.expand(len(images), 2, 3), list(batch.shape), align_corners=False)
    rotated = F.grid_sample(batch, grid, align_corners=False).squeeze(1)
    return (rotated + SHIFT_NOISE * torch.randn(rotated.shape, generator=generator)).clamp(0, 1)


def digit_classifier() -> nn.Sequential:
    """The float MLP the demo trains: 64 pixels, two hidden ReLU layers, 10 logits."""
    return nn.Sequential(
        nn.Linear(64, HIDDEN_FEATURES),
        nn.ReLU(),
        nn.Linear(HIDDEN_FEATURES, HIDDEN_FEATURES),
        nn.ReLU(),
        nn.Linear(HIDDEN_FEATURES, 10),
    )


def pretrained_digit_classifier(tasks: DigitTasks, seed: int) -> nn.Sequential:
    """The digit classifier trained on the normal task: the float model the demo and the examples start from."""
    torch.manual_seed(seed)
    model = digit_classifier()
    train(model, tasks.train_images, tasks.train_labels, PRETRAINING_STEPS, seed, "float model")
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 copy of ``model``: every ``nn.Linear`` dynamically quantized (``model`` is left as it is)."""
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` that ``model`` classifies as ``labels``."""
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def shard_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Cross-entropy of ``model`` on this process's share of the global batch ``batch`` (indices).

    The batch splits into ``world_size`` equal shares, so the average of the processes'
    gradients, which DistributedDataParallel takes, is the gradient of the shares' mean
    loss. For a float model that is the whole batch's gradient. For an int8 model it
    differs slightly, as it does for any split of a batch: dynamic quantization scales
    the activations of each call by their own range.
    """
    share = batch.tensor_split(world_size)[rank]
    return F.cross_entropy(model(images[share]), labels[share])


class ProgressBar:
    """A one-line progress bar on stderr: label, bar, steps done, latest loss.

    On a terminal it is redrawn in place as steps are counted; elsewhere (a log, a pipe)
    only its final state is written, once.
    """

    WIDTH = 30

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label = label
        self.total = total
        self.enabled = enabled
        self.in_place = enabled and sys.stderr.isatty()
        self.done = 0
        self.loss = math.nan
        self.drawn_percent = -1

    def __enter__(self) -> "ProgressBar":
        return self

    def update(self, loss: float) -> None:
        """Count one step; on a terminal, redraw when the percentage done has changed."""
        self.done += 1
        self.loss = loss
        percent = 100 * self.done // self.total
        # About a hundred redraws in all: enough to see it move, few enough to cost nothing.
        if self.in_place and percent != self.drawn_percent:
            self._draw()
            self.drawn_percent = percent

    def __exit__(self, *exc_info) -> None:
        if self.enabled:
            if not self.in_place:
                self._draw()
            sys.stderr.write("\n")

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r   {self.label:<12} [{bar}] {self.done}/{self.total}  loss {self.loss:.3f}")
        sys.stderr.flush()


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    seed: int,
    label: str,
    rank: int = 0,
    world_size: int = 1,
) -> float:
    """Adam on the parameters of ``model`` that require grad, over ``steps`` random batches; returns seconds per step.

    With ``world_size`` > 1 (inside a process group) the model is wrapped in
    DistributedDataParallel and each process trains on its share of every batch.
    Rank 0 shows a progress bar named ``label``.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if world_size > 1:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE)
    # The same seed in every process, so that all of them draw the same global batches.
    batches = torch.Generator().manual_seed(seed)
    with ProgressBar(label, steps, enabled=rank == 0) as progress:
        start = time.perf_counter()
        for _ in range(steps):
            batch = torch.randint(len(labels), (BATCH_SIZE,), generator=batches)
            loss = shard_loss(model, images, labels, batch, rank, world_size)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            progress.update(loss.item())
        return (time.perf_counter() - start) / steps


@contextlib.contextmanager
def one_intra_op_thread():
    """Run the block with one intra-op thread, then restore the previous count.

    The digit models' matrices are tiny: synchronising threads costs more than they
    save, and far more when other work shares the cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
