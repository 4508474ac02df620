"""Captum attributions of an int8 digit classifier, beside its float original's.

    python examples/attribution.py [--digits 100] [--steps 32] [--seed 0]

Captum's gradient-based methods (here Saliency and IntegratedGradients) differentiate a
model's output with respect to its input. Through the int8 layers of a ``quantize_dynamic``
model, stock PyTorch gives no such gradient; with qlgrad imported it is the straight-through
one, and Captum runs on the int8 model unchanged. The int8 model approximates the float one,
so their attributions should agree: this prints, per method, the cosine between the int8
and the float attributions of each test digit (for the logit of its true class), and for
IntegratedGradients the completeness gap Captum reports (the attributions' sum minus the
logit's change from the black baseline image), which is small when the gradients along the
path are right.

Needs scikit-learn and Captum: pip install 'qlgrad[examples]'.
"""

import argparse

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, Saliency

from qlgrad._deprecations import hide_upstream_deprecations  # importing qlgrad registers the Autograd kernels
from qlgrad.demo import digits
from qlgrad.demo.cli import positive_int


def attributions(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> dict:
    """``{method: (attributions [n, 64], completeness gap [n] or None)}`` for the logits of ``labels``."""
    saliency = Saliency(model).attribute(images, target=labels, abs=False)
    integrated, gap = IntegratedGradients(model).attribute(
        images, baselines=torch.zeros_like(images), target=labels, n_steps=steps, return_convergence_delta=True
    )
    return {"Saliency": (saliency, None), "IntegratedGradients": (integrated, gap)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train and quantize the digit classifier, attribute both models, print how alike they are.

    Returns the mean cosine of int8 to float attributions per method.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=positive_int, default=100, help="test digits to attribute (default 100)")
    parser.add_argument("--steps", type=positive_int, default=32, help="IntegratedGradients steps (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    hide_upstream_deprecations()

    tasks = digits.load_digit_tasks(args.seed)
    with digits.one_intra_op_thread():
        float_model = digits.pretrained_digit_classifier(tasks, args.seed)
        models = {"float": float_model.eval(), "int8": digits.quantize_int8(float_model)}
        # Requiring grad up front, as Captum expects (it warns and sets it otherwise).
        images = tasks.test_images[: args.digits].clone().requires_grad_()
        labels = tasks.test_labels[: args.digits]
        results = {name: attributions(model, images, labels, args.steps) for name, model in models.items()}

    print(f"{'method':<20} {'cosine int8 to float':>22} {'|completeness gap| int8 / float':>34}")
    mean_cosines = {}
    for method, (float_values, float_gap) in results["float"].items():
        int8_values, int8_gap = results["int8"][method]
        mean_cosines[method] = F.cosine_similarity(int8_values, float_values, dim=1).mean().item()
        gaps = "" if float_gap is None else f"{int8_gap.abs().mean().item():.4f} / {float_gap.abs().mean().item():.4f}"
        print(f"{method:<20} {mean_cosines[method]:>+22.4f} {gaps:>34}")
    return mean_cosines


if __name__ == "__main__":
    main()
