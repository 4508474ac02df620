"""Input saliency of an int8 digit classifier, next to its float original's.

    python examples/saliency.py [--out saliency.png] [--digits 6] [--seed 0]

Saliency is |d logit / d input|: how strongly each pixel sways the logit of the
digit's true class. Through an int8 model that gradient exists only with qlgrad:
stock PyTorch warns and leaves the input without a gradient. The figure shows, for
each digit, the image, the float model's saliency and the int8 model's; the int8
model approximates the float one, so their saliency maps should look alike.

Needs scikit-learn and matplotlib: pip install 'qlgrad[examples]'.
"""

import argparse

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # not pyplot: no display or backend needed to write a file

from qlgrad._deprecations import hide_upstream_deprecations  # importing qlgrad registers the Autograd kernel
from qlgrad.demo import digits
from qlgrad.demo.cli import positive_int


def saliency(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """|d logit[label] / d image| for each image (``[n, 64]``): each logit depends on its own image only."""
    images = images.clone().requires_grad_()
    model(images).gather(1, labels[:, None]).sum().backward()
    return images.grad.abs()


def plot(images: torch.Tensor, maps: dict[str, torch.Tensor], labels: torch.Tensor, path: str) -> None:
    """One row per digit: the image, then each model's saliency map."""
    columns = {"digit": images, **{f"{name} saliency": values for name, values in maps.items()}}
    figure = Figure(figsize=(2 * len(columns), 2 * len(images)), layout="tight")
    axes = figure.subplots(len(images), len(columns), squeeze=False)
    for row, label in enumerate(labels.tolist()):
        for column, (title, values) in enumerate(columns.items()):
            axis = axes[row][column]
            axis.imshow(values[row].view(8, 8).numpy(), cmap="gray" if column == 0 else "magma")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title)
        axes[row][0].set_ylabel(f"label {label}")
    figure.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> None:
    """Train and quantize the digit classifier, print how alike the saliency maps are, and write the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="saliency.png", help="PNG to write (default saliency.png)")
    parser.add_argument("--digits", type=positive_int, default=6, help="digits to show (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    hide_upstream_deprecations()

    tasks = digits.load_digit_tasks(args.seed)
    with digits.one_intra_op_thread():
        float_model = digits.pretrained_digit_classifier(tasks, args.seed)
    models = {"float": float_model, "int8": digits.quantize_int8(float_model)}

    images, labels = tasks.test_images[: args.digits], tasks.test_labels[: args.digits]
    maps = {name: saliency(model, images, labels) for name, model in models.items()}
    for label, float_map, int8_map in zip(labels.tolist(), maps["float"], maps["int8"], strict=True):
        cosine = F.cosine_similarity(int8_map, float_map, dim=0).item()
        print(f"label {label}: cosine of int8 to float saliency {cosine:+.4f}")
    plot(images, maps, labels, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
