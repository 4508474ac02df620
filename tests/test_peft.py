"""PEFT's LoRA on dynamic int8 and fp16 layers through qlgrad.peft: gradients, saving and loading, refusals."""

import peft
import pytest
import torch
from torch import nn

import qlgrad.peft
from helpers import relative_error
from qlgrad.reference import with_reference_layers

DTYPES = pytest.mark.parametrize("dtype", [torch.qint8, torch.float16], ids=["int8", "fp16"])
INT8_LAYERS = ["body.0", "body.2", "body.4"]  # body.0 is a fused LinearReLU


class Upstream(nn.Module):
    """A float layer in front of a quantizable body whose first Linear is fused with its ReLU."""

    def __init__(self):
        super().__init__()
        self.float_in = nn.Linear(12, 24)
        self.body = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 3))

    def forward(self, x):
        return self.body(torch.tanh(self.float_in(x)))


def quantized_upstream(dtype: torch.dtype, seed: int = 0, fuse: bool = True) -> nn.Module:
    """``Upstream`` from ``seed`` with its body dynamically quantized to ``dtype``; the same for the same seed.

    ``fuse`` fuses the body's first Linear with its ReLU first (an ``Identity`` takes the ReLU's place).
    """
    torch.manual_seed(seed)
    model = Upstream().eval()
    if fuse:
        model.body = torch.ao.quantization.fuse_modules(model.body, [["0", "1"]])
    spec = {nn.Linear, torch.ao.nn.intrinsic.LinearReLU}
    model.body = torch.ao.quantization.quantize_dynamic(model.body, spec, dtype=dtype)
    return model


def lora_config(**options) -> peft.LoraConfig:
    return peft.LoraConfig(**{"r": 3, "lora_alpha": 6, "target_modules": ["float_in", *INT8_LAYERS], **options})


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter parameter random values (lora_B starts at zero, which hides mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def int8_layer_state(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of every dynamic quantized Linear, copied."""
    return [
        (layer.weight().clone(), layer.bias().clone())
        for layer in model.modules()
        if isinstance(layer, qlgrad.peft.DynamicQuantizedLinear)
    ]


@DTYPES
def test_adapters_wrap_the_targeted_layers_and_start_as_the_base_model(dtype):
    model = quantized_upstream(dtype)
    x = torch.randn(5, 12)
    expected = model(x)
    adapted = qlgrad.peft.get_peft_model(model, lora_config())
    for name in INT8_LAYERS:
        layer = adapted.base_model.model.get_submodule(name)
        assert type(layer) is qlgrad.peft.DynamicQuantizedLoraLinear
        assert isinstance(layer.get_base_layer(), qlgrad.peft.DynamicQuantizedLinear)
    assert type(adapted.base_model.model.float_in) is peft.tuners.lora.Linear  # PEFT's own on float layers
    assert isinstance(
        adapted.base_model.model.body[0].get_base_layer(), torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU
    )
    trainable = {name for name, parameter in adapted.named_parameters() if parameter.requires_grad}
    assert len(trainable) == 8 and all(".lora_" in name for name in trainable)
    torch.testing.assert_close(adapted(x), expected, rtol=0, atol=0)  # lora_B starts at zero


def gradients(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gradients of a fixed loss with respect to ``x`` and to each trainable parameter of ``model``."""
    model.zero_grad()
    inputs = x.clone().requires_grad_()
    model(inputs).pow(2).sum().backward()
    return inputs.grad, [parameter.grad for parameter in model.parameters() if parameter.requires_grad]


def assert_gradients_close(got, expected, bound: float) -> None:
    """Each gradient within ``bound`` of its reference, in relative error of the norm."""
    (input_grad, adapter_grads), (expected_input_grad, expected_adapter_grads) = got, expected
    for gradient, reference in zip(
        [input_grad, *adapter_grads], [expected_input_grad, *expected_adapter_grads], strict=True
    ):
        assert reference.abs().sum() > 0
        assert relative_error(gradient, reference) <= bound


@DTYPES
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_rslora": True, "lora_bias": True},
        {"init_lora_weights": "gaussian", "r": 1},
        {"rank_pattern": {"body.2": 5}, "alpha_pattern": {"body.4": 1}},
    ],
    ids=["plain", "rslora-bias", "gaussian-rank1", "patterns"],
)
def test_gradients_match_the_straight_through_reference(dtype, options):
    """Input and adapter gradients against the same adapted model with a float64 straight-through backward.

    The reference is unfused: its layers are wrapped by the reference backward, which the fused
    layer's update inside the ReLU cannot go through. Both compute the same function.
    """
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(dtype), lora_config(**options))
    randomize_adapters(adapted)
    reference = qlgrad.peft.get_peft_model(quantized_upstream(dtype, fuse=False), lora_config(**options))
    randomize_adapters(reference)
    with_reference_layers(reference)
    x = torch.randn(16, 12)
    torch.testing.assert_close(adapted(x), reference(x), rtol=0, atol=0)
    got = gradients(adapted, x)
    assert len(got[1]) == (12 if options.get("lora_bias") else 8)
    assert_gradients_close(got, gradients(reference, x), bound=1e-6)


def test_fp16_adapters_match_peft_on_the_float_model_with_the_same_weights():
    """fp16 layers do not quantize activations: PEFT on the float model, its weights rounded to
    fp16, is a reference that shares no code with qlgrad (and has the ReLU unfused)."""
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(torch.float16), lora_config())
    randomize_adapters(adapted)
    torch.manual_seed(0)  # the weights quantized_upstream starts from
    float_model = Upstream()
    with torch.no_grad():
        for layer in float_model.body:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(layer.weight.half().float())
    reference = peft.get_peft_model(float_model, lora_config())
    randomize_adapters(reference)
    x = torch.randn(16, 12)
    assert relative_error(adapted(x), reference(x)) <= 1e-6
    assert_gradients_close(gradients(adapted, x), gradients(reference, x), bound=1e-6)


def test_adapters_train_through_frozen_int8_layers():
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))
    model = torch.ao.quantization.quantize_dynamic(float_model.eval(), {nn.Linear}, dtype=torch.qint8)
    frozen = int8_layer_state(model)
    # No float parameter at all: PEFT alone fails on such a model.
    adapted = qlgrad.peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2", "4"]))
    adapters = [parameter for parameter in adapted.parameters() if parameter.requires_grad]
    assert len(adapters) == len(list(adapted.parameters())) == 6  # and nothing else, no placeholder left
    torch.manual_seed(1)
    x, target = torch.randn(64, 12), torch.randint(3, (64,))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(adapters, lr=2e-2)

    initial_loss = loss_fn(adapted(x), target)
    initial_loss.backward()
    # The first adapter's gradient reaches it only through the int8 layers after it.
    assert adapted.base_model.model[0].lora_B["default"].weight.grad.abs().sum() > 0
    optimizer.step()
    for _ in range(40):
        optimizer.zero_grad()
        loss_fn(adapted(x), target).backward()
        optimizer.step()

    assert loss_fn(adapted(x), target).item() < 0.5 * initial_loss.item()
    for (weight, bias), (weight_after, bias_after) in zip(frozen, int8_layer_state(adapted), strict=True):
        assert torch.equal(weight.int_repr(), weight_after.int_repr()) and torch.equal(bias, bias_after)


@DTYPES
def test_several_adapters_switch_and_disable(dtype):
    base_output_model = quantized_upstream(dtype)
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(dtype), lora_config())
    adapted.add_adapter("second", lora_config(r=2, target_modules=INT8_LAYERS))  # already adapted layers
    randomize_adapters(adapted)
    x = torch.randn(6, 12)
    first = adapted(x)
    adapted.set_adapter("second")
    second = adapted(x)
    assert not torch.allclose(first, second)
    with adapted.disable_adapter():
        torch.testing.assert_close(adapted(x), base_output_model(x), rtol=0, atol=0)
    adapted.set_adapter("default")
    torch.testing.assert_close(adapted(x), first, rtol=0, atol=0)


@DTYPES
def test_from_pretrained_reproduces_the_saved_models_outputs_exactly(dtype, tmp_path):
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(dtype), lora_config(use_rslora=True))
    adapted.add_adapter("second", lora_config(r=2, target_modules=INT8_LAYERS))
    randomize_adapters(adapted)
    adapted.save_pretrained(tmp_path)
    x = torch.randn(9, 12)
    outputs = {}
    for name in ("default", "second"):
        adapted.set_adapter(name)
        outputs[name] = adapted(x)

    loaded = qlgrad.peft.from_pretrained(quantized_upstream(dtype), tmp_path)
    assert type(loaded.base_model.model.body[2]) is qlgrad.peft.DynamicQuantizedLoraLinear
    assert not any(parameter.requires_grad for parameter in loaded.parameters())  # PEFT's default: inference
    torch.testing.assert_close(loaded(x), outputs["default"], rtol=0, atol=0)
    # A second adapter, onto the layers that already have one, through PEFT itself.
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    loaded.set_adapter("second")
    torch.testing.assert_close(loaded(x), outputs["second"], rtol=0, atol=0)

    trainable = qlgrad.peft.from_pretrained(quantized_upstream(dtype), tmp_path, is_trainable=True)
    assert sum(parameter.requires_grad for parameter in trainable.parameters()) == 8
    torch.testing.assert_close(trainable(x), outputs["default"], rtol=0, atol=0)


def test_a_whole_state_dict_loads_the_int8_layers_too():
    """Loading a state dict that holds the base layers still loads them: only adapter-only loads skip them."""
    source = qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8, seed=0), lora_config())
    randomize_adapters(source)
    target = qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8, seed=5), lora_config())
    x = torch.randn(4, 12)
    assert not torch.allclose(target(x), source(x))
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@DTYPES
def test_merging_is_refused_with_what_to_do_instead(dtype):
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(dtype), lora_config(target_modules=INT8_LAYERS))
    randomize_adapters(adapted)
    x = torch.randn(4, 12)
    before = adapted(x)
    expected = (
        r"cannot merge LoRA adapters into DynamicQuantizedLinear.*packed.*merge_and_unload\(\)"
        r".*quantize the merged model again"
    )
    with pytest.raises(ValueError, match=expected):
        adapted.merge_and_unload()
    with pytest.raises(ValueError, match=expected):
        adapted.merge_adapter()
    torch.testing.assert_close(adapted(x), before, rtol=0, atol=0)  # nothing was changed
    # Unloading without merging gives the int8 model back.
    unloaded = adapted.unload()
    torch.testing.assert_close(unloaded(x), quantized_upstream(dtype)(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"use_dora": True}, "use_dora=True does not apply to an int8 layer: DoRA rescales the base weight"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' does not apply to an int8 layer"),
        ({"init_lora_weights": "olora"}, "init_lora_weights='olora' does not apply to an int8 layer"),
        ({"init_lora_weights": "orthogonal"}, "init_lora_weights='orthogonal' does not apply to an int8 layer"),
        (
            {"init_lora_weights": "eva", "eva_config": peft.EvaConfig()},
            "init_lora_weights='eva' does not apply to an int8 layer",
        ),
    ],
)
def test_options_that_need_a_float_base_weight_are_refused(options, expected):
    with pytest.raises(ValueError, match=expected):
        qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8), lora_config(**options))
    # Also when they come with an adapter added later to layers that have one already.
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8), lora_config(target_modules=INT8_LAYERS))
    with pytest.raises(ValueError, match=expected):
        adapted.add_adapter("second", lora_config(target_modules=INT8_LAYERS, **options))


def test_other_peft_methods_are_refused():
    with pytest.raises(TypeError, match="expected a peft.LoraConfig, got IA3Config"):
        qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8), peft.IA3Config(target_modules=INT8_LAYERS))


def test_all_linear_shorthand_is_refused_as_it_would_leave_the_int8_layers_out():
    expected = (
        r"target_modules='all-linear' selects float nn.Linear layers only"
        r".*3 dynamic quantized.*\['body.0', 'body.2', 'body.4'\]"
    )
    with pytest.raises(ValueError, match=expected):
        qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8), peft.LoraConfig(target_modules="all-linear"))


def test_an_added_adapter_reaches_int8_layers_without_one_through_with_quantized_layers():
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8), lora_config(target_modules=["float_in"]))
    with pytest.raises(ValueError, match="is not supported"):  # PEFT itself does not know the layer type
        adapted.add_adapter("plain", lora_config(target_modules=["body.2"]))
    adapted.add_adapter("int8", qlgrad.peft.with_quantized_layers(lora_config(target_modules=["body.2"])))
    assert type(adapted.base_model.model.body[2]) is qlgrad.peft.DynamicQuantizedLoraLinear


def test_mixed_batches_give_each_sample_its_own_adapter():
    """One adapter per sample (``adapter_names``); adapted in the last layer only, whose input is
    then the same batch in every run, so that the rows can be compared exactly."""
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8), lora_config(target_modules=["body.4"]))
    adapted.add_adapter("second", lora_config(target_modules=["body.4"]))
    randomize_adapters(adapted)
    adapted.eval()  # PEFT takes adapter_names for inference only
    x = torch.randn(6, 12)
    names = ["default", "second", "__base__", "second", "default", "__base__"]
    expected = {}
    for name in ("default", "second"):
        adapted.set_adapter(name)
        expected[name] = adapted(x)
    with adapted.disable_adapter():
        expected["__base__"] = adapted(x)
    mixed = adapted(x, adapter_names=names)
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], expected[name][row], rtol=0, atol=0)


def test_mixed_batches_are_refused_on_a_fused_linear_relu():
    adapted = qlgrad.peft.get_peft_model(quantized_upstream(torch.qint8), lora_config(target_modules=["body.0"]))
    adapted.eval()
    with pytest.raises(
        ValueError, match=r"adapter_names \(one adapter per sample\) is not supported on a fused LinearReLU"
    ):
        adapted(torch.randn(2, 12), adapter_names=["default", "default"])
