"""The fine-tuning demo (PEFT adapters on an int8 model), its data-parallel mode, and the saliency example."""

import contextlib
import importlib.metadata
import os
import sysconfig

import peft
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import qlgrad.peft
from helpers import load_example
from qlgrad.demo import cli, digits, lora
from qlgrad.demo.data_parallel import run_data_parallel


def test_demo_recovers_accuracy_on_the_shifted_task(capsys):
    result = cli.run(cli.parse_args(["--steps", "40"]))
    for base in ("int8", "float"):
        assert result.shifted_accuracy_after[base] > result.shifted_accuracy_before[base] + 0.1
    assert result.gradient_agreement.cosine > 0.9999
    assert result.gradient_agreement.norm_ratio == pytest.approx(1, abs=1e-3)
    output = capsys.readouterr().out
    assert "stock PyTorch" in output and "time per step" in output


def test_demo_fine_tunes_through_peft_with_the_same_initial_adapters_on_both_bases():
    models = lora.adapted_models(digits.digit_classifier(), lora_rank=2, seed=0)
    int8_layers = [m for m in models["int8"].modules() if isinstance(m, qlgrad.peft.DynamicQuantizedLoraLinear)]
    assert len(int8_layers) == 3
    adapters = {name: peft.get_peft_model_state_dict(model) for name, model in models.items()}
    assert adapters["int8"].keys() == adapters["float"].keys() and len(adapters["int8"]) == 6
    for key, value in adapters["int8"].items():
        assert torch.equal(value, adapters["float"][key])


def test_demo_is_a_console_script():
    (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name="qlgrad-demo")
    assert entry_point.load() is cli.main
    assert os.path.exists(os.path.join(sysconfig.get_path("scripts"), "qlgrad-demo"))


def test_precision_reaches_qlgrad_backward_precision(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def backward_precision(name):
        entered.append(name)
        yield

    monkeypatch.setattr(qlgrad, "backward_precision", backward_precision)
    options = cli.parse_args(["--precision", "bf16"])
    images, labels = torch.rand(8, 64), torch.randint(10, (8,))
    lora.fine_tune_adapters(0, 1, digits.digit_classifier(), images, labels, 2, 1, 0, options.precision)
    assert entered == ["bf16"]


PROCESSES = 2


def adapted_models_with_random_adapters(float_model: nn.Module) -> dict[str, nn.Module]:
    """The demo's models to fine-tune, with lora_B non-zero too, so that every adapter has a gradient."""
    models = lora.adapted_models(float_model, lora_rank=3, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for model in models.values():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.normal_(std=0.1)
    return models


def adapter_gradients(rank, world_size, float_model, images, labels, batch):
    """Job for run_data_parallel: the adapter gradients of each base for the global batch ``batch``.

    As rank 0 of 1, it averages the losses of the batch's ``PROCESSES`` shares, one after
    the other: what DistributedDataParallel computes with one share per process.
    """
    gradients = {}
    for name, model in adapted_models_with_random_adapters(float_model).items():
        if world_size > 1:
            # Kept referenced until backward has run: the wrapper's hooks do the all-reduce.
            parallel_model = DistributedDataParallel(model)
            loss = digits.shard_loss(parallel_model, images, labels, batch, rank, world_size)
        else:
            shares = range(PROCESSES)
            loss = (
                sum(digits.shard_loss(model, images, labels, batch, share, PROCESSES) for share in shares) / PROCESSES
            )
        loss.backward()
        gradients[name] = [p.grad for p in model.parameters() if p.requires_grad]
    return gradients


def test_data_parallel_gradients_equal_single_process_gradients():
    torch.manual_seed(0)
    float_model = digits.digit_classifier()
    images, labels = torch.rand(40, 64), torch.randint(10, (40,))
    batch = torch.randint(40, (digits.BATCH_SIZE,))
    args = (float_model, images, labels, batch)
    parallel = run_data_parallel(adapter_gradients, PROCESSES, args, timeout=50)
    single = adapter_gradients(0, 1, *args)
    for name in ("int8", "float"):
        assert len(parallel[name]) == len(single[name]) == 6
        for expected, actual in zip(single[name], parallel[name], strict=True):
            assert expected.abs().sum() > 0
            torch.testing.assert_close(actual, expected)

    # On the float base that is the whole batch's gradient too. (Not on the int8 base:
    # dynamic quantization scales activations by the range of each call's batch.)
    whole_batch = adapted_models_with_random_adapters(float_model)["float"]
    digits.shard_loss(whole_batch, images, labels, batch).backward()
    adapters = [p for p in whole_batch.parameters() if p.requires_grad]
    for expected, actual in zip(adapters, parallel["float"], strict=True):
        torch.testing.assert_close(actual, expected.grad)


def test_saliency_example_writes_a_png(tmp_path, capsys):
    saliency = load_example("saliency")
    out = tmp_path / "saliency.png"
    saliency.main(["--out", str(out), "--digits", "2"])
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "cosine of int8 to float saliency" in capsys.readouterr().out
