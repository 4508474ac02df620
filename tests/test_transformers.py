"""Hugging Face's front door to torchao's layers: from_pretrained with a TorchAoConfig, PEFT's LoRA and
transformers' Trainer, on a tiny random Llama saved here (no network). For each config qlgrad
differentiates and each dtype: the adapters' gradients against the float64 straight-through oracle,
Trainer steps, adapters saved and reloaded; resuming from a Trainer checkpoint; the configs that
stay untrainable; either import order and unsupported releases, in fresh interpreters."""

import os
import re
import subprocess
import sys
import textwrap

import peft
import pytest
import torch
from test_torchao_lowbit import assert_straight_through, oracle_layers
from torchao.prototype.quantization.int4.inference_workflow import (
    Int8DynamicActivationInt4WeightConfig,
    PrototypeInt4WeightOnlyConfig,
)
from torchao.quantization import (
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
    MappingType,
    PerAxis,
    PerGroup,
)
from torchao.quantization.quantize_.workflows import IntxPackingFormat
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, TorchAoConfig, Trainer, TrainingArguments
from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer

import qlgrad
from helpers import relative_error
from qlgrad import _transformers

# quantize_ would otherwise change torch._inductor.config for the rest of the test session.
KEEP_INDUCTOR_CONFIG = {"set_inductor_config": False}
CONFIGS = {
    "intx_int4_group32": lambda: Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(32)
    ),
    "int4_opaque_group128": lambda: PrototypeInt4WeightOnlyConfig(group_size=128, **KEEP_INDUCTOR_CONFIG),
    "int8": lambda: Int8DynamicActivationInt8WeightConfig(**KEEP_INDUCTOR_CONFIG),
}
DTYPES = (torch.float32, torch.bfloat16)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCABULARY, TOKENS = 64, 16
# PeftModel reads the model's is_gradient_checkpointing, which transformers 5 deprecates.
PEFT_READS_DEPRECATED_FLAG = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
pytestmark = pytest.mark.filterwarnings(PEFT_READS_DEPRECATED_FLAG)


@pytest.fixture(autouse=True)
def one_thread():
    # 128-wide matrices: threads cost more than they save, and far more on shared cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A random 2-layer Llama saved in float32: 128 wide, so that int4 groups of 128 quantize every projection."""
    path = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(
        vocab_size=VOCABULARY,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENS,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def load(path, config, dtype):
    """The model at ``path`` quantized by transformers with torchao's ``config``."""
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=TorchAoConfig(CONFIGS[config]())
    )
    model.config.use_cache = False
    return model


def adapted(model):
    """PEFT's LoRA on every projection; both factors random, so that both get gradients from the start."""
    torch.manual_seed(1)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=PROJECTIONS, init_lora_weights=False, task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, lora)


def examples(count=8, seed=2):
    ids = torch.randint(VOCABULARY, (count, TOKENS), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": row} for row in ids]


def batch():
    return {key: torch.stack([example[key] for example in examples(4, seed=3)]) for key in ("input_ids", "labels")}


def adapters(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapter_gradients(model):
    parameters = adapters(model)
    grads = torch.autograd.grad(model(**batch()).loss, list(parameters.values()))
    return dict(zip(parameters, grads, strict=True))


def training_arguments(output, steps=2, save_strategy="no", **kwargs):
    return TrainingArguments(
        output_dir=str(output),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy=save_strategy,
        **kwargs,
    )


def logits(model):
    with torch.no_grad():
        return model.eval()(batch()["input_ids"]).logits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS)
def test_trainer_trains_adapters_on_a_torchao_model(base_model, config, dtype, tmp_path):
    model = adapted(load(base_model, config, dtype))
    assert model.base_model.model.hf_quantizer.is_trainable

    # Every adapter, in both layers, learns from gradients through the quantized layers after it:
    # the straight-through ones, as the float64 oracle computes them (in fp32; with nothing
    # chosen a bfloat16 model takes bf16 products, whose accuracy per layer
    # test_bfloat16_products.py bounds, and whose result is the explicit bf16 choice's).
    with qlgrad.backward_precision("fp32"):
        got = adapter_gradients(model)
    if dtype == torch.bfloat16:
        by_dtype = adapter_gradients(model)
        with qlgrad.backward_precision("bf16"):
            chosen_bf16 = adapter_gradients(model)
        assert all(torch.equal(by_dtype[name], chosen_bf16[name]) for name in by_dtype)
    with oracle_layers(model) as quantized:
        assert len(quantized) == 2 * len(PROJECTIONS)  # every projection, the output head left float
        expected = adapter_gradients(model)
    assert len(got) == 4 * len(PROJECTIONS)
    for name in got:
        assert torch.count_nonzero(got[name]) > 0, name
        assert_straight_through(got[name], expected[name], dtype)
        if dtype == torch.float32:
            assert relative_error(got[name], expected[name]) <= 1e-5, name

    before = {name: p.detach().clone() for name, p in adapters(model).items()}
    trainer = Trainer(model=model, args=training_arguments(tmp_path), train_dataset=examples())
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert all(not torch.equal(p, before[name]) for name, p in adapters(model).items())

    # Saved, and loaded onto the same model freshly loaded and quantized: the trained model's logits.
    model.save_pretrained(tmp_path / "adapters")
    loaded = peft.PeftModel.from_pretrained(load(base_model, config, dtype), tmp_path / "adapters")
    assert torch.equal(logits(loaded), logits(model))


def test_training_resumes_from_a_trainer_checkpoint(base_model, tmp_path):
    config = "int4_opaque_group128"
    model = adapted(load(base_model, config, torch.float32))
    arguments = training_arguments(tmp_path, steps=3, save_strategy="steps", save_steps=1, seed=0)
    Trainer(model=model, args=arguments, train_dataset=examples()).train()
    trained = {name: p.detach().clone() for name, p in adapters(model).items()}

    resumed = adapted(load(base_model, config, torch.float32))
    trainer = Trainer(model=resumed, args=arguments, train_dataset=examples())
    result = trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))

    assert result.global_step == 3
    assert all(torch.equal(p, trained[name]) for name, p in adapters(resumed).items())


def stock_is_trainable(config) -> bool:
    return vars(TorchAoHfQuantizer)["is_trainable"].fget.__wrapped__(TorchAoHfQuantizer(TorchAoConfig(config)))


def is_trainable(config) -> bool:
    return TorchAoHfQuantizer(TorchAoConfig(config)).is_trainable


# The configs whose layers qlgrad differentiates and transformers calls untrainable.
MADE_TRAINABLE = {
    "intx_int4_group32": CONFIGS["intx_int4_group32"],
    "intx_int2_per_row_asymmetric": lambda: Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int2, weight_granularity=PerAxis(0), weight_mapping_type=MappingType.ASYMMETRIC
    ),
    "intx_int8_group64": lambda: Int8DynamicActivationIntxWeightConfig(weight_granularity=PerGroup(64)),
    "int4_opaque_group128": CONFIGS["int4_opaque_group128"],
    "int4_opaque_group32": lambda: PrototypeInt4WeightOnlyConfig(group_size=32, **KEEP_INDUCTOR_CONFIG),
}
# transformers' answer, kept: True for 8-bit configs (the int8 dynamic one's layers qlgrad
# differentiates; weight-only ones have torchao's own gradient), False for the others.
KEPT = {
    "int8": (CONFIGS["int8"], True),
    "int8_weight_only": (lambda: Int8WeightOnlyConfig(**KEEP_INDUCTOR_CONFIG), True),
    "intx_opaque": (
        lambda: Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, intx_packing_format=IntxPackingFormat.OPAQUE_TORCHAO_AUTO
        ),
        False,
    ),
    "intx_version_1": (lambda: Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, version=1), False),
    "da8w4": (lambda: Int8DynamicActivationInt4WeightConfig(**KEEP_INDUCTOR_CONFIG), False),
    "int4_weight_only": (lambda: Int4WeightOnlyConfig(**KEEP_INDUCTOR_CONFIG), False),
    "intx_weight_only": (lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4), False),
}


@pytest.mark.parametrize("config", MADE_TRAINABLE)
def test_configs_qlgrad_differentiates_are_made_trainable(config):
    assert not stock_is_trainable(MADE_TRAINABLE[config]())
    assert is_trainable(MADE_TRAINABLE[config]())
    assert _transformers.differentiates(MADE_TRAINABLE[config]())


@pytest.mark.parametrize("config", KEPT)
def test_other_configs_keep_transformers_answer(config):
    make, trainable = KEPT[config]
    assert stock_is_trainable(make()) is trainable
    assert is_trainable(make()) is trainable
    assert not _transformers.differentiates(make())


def test_trainer_still_refuses_an_untrainable_config(base_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.float32, quantization_config=TorchAoConfig(KEPT["intx_weight_only"][0]())
    )
    model = adapted(model)
    with pytest.raises(ValueError, match="do not support training"):
        Trainer(model=model, args=training_arguments(tmp_path), train_dataset=examples())


def test_changing_the_quantizer_twice_keeps_one_wrapper():
    is_trainable_property = vars(TorchAoHfQuantizer)["is_trainable"]
    assert is_trainable_property.fget.qlgrad_trainable
    _transformers.install("5.24.0", "0.18.0")
    assert vars(TorchAoHfQuantizer)["is_trainable"] is is_trainable_property


def test_unsupported_version_warns_once_and_changes_nothing(monkeypatch):
    hooks = dict(_transformers._import_hooks._HOOKS)
    monkeypatch.setattr(_transformers._import_hooks, "_HOOKS", {})
    supported = re.escape(", ".join(_transformers.SUPPORTED_TRANSFORMERS_VERSIONS))
    with pytest.warns(
        UserWarning, match=rf"transformers 5\.0\.0 is installed, but qlgrad supports transformers {supported} only"
    ) as caught:
        _transformers.install("5.0.0", "0.18.0")
        _transformers.install("5.24.0", "0.17.0")  # an unsupported torchao: silent here, torchao's own warning says it
        _transformers.install(None, "0.18.0")
    assert len(caught) == 1
    assert _transformers._import_hooks._HOOKS == {} and _transformers.QUANTIZER_MODULE in hooks


TRAINABLE_IN_A_FRESH_INTERPRETER = """
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from transformers import TorchAoConfig
    from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer
    configs = [Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4), PrototypeInt4WeightOnlyConfig()]
    print("trainable:", [TorchAoHfQuantizer(TorchAoConfig(config)).is_trainable for config in configs])
"""

IMPORTS = {
    "qlgrad_first": "import qlgrad\nimport transformers\n",
    # transformers' quantizer module and torchao executed before qlgrad is imported.
    "transformers_first": "import transformers.quantizers.quantizer_torchao\nimport torchao\nimport qlgrad\n",
}
# (distribution, version) that a distribution record found before the installed one claims. (An
# unsupported torchao, which leaves transformers alone too, is tried in this process above.)
UNSUPPORTED = {"transformers_5.0.0": ("transformers", "5.0.0")}


def start_script(imports: str, release, directory) -> subprocess.Popen:
    """The script in a fresh interpreter, every warning shown once, started now and left running."""
    env = dict(os.environ)
    if release is not None:
        distribution, version = release
        dist_info = directory / f"{distribution}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(directory), env.get("PYTHONPATH")) if p)
    script = imports + textwrap.dedent(TRAINABLE_IN_A_FRESH_INTERPRETER)
    return subprocess.Popen(
        [sys.executable, "-W", "default", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module", autouse=True)
def scripts(tmp_path_factory):
    """The fresh interpreters of the last tests, started with the first test of this file: importing
    torch, transformers and torchao takes seconds, spent beside the other tests."""
    started = {order: start_script(imports, None, None) for order, imports in IMPORTS.items()}
    for name, release in UNSUPPORTED.items():
        started[name] = start_script(IMPORTS["qlgrad_first"], release, tmp_path_factory.mktemp(name))
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("order", IMPORTS)
def test_either_import_order(scripts, order):
    returncode, stdout, stderr = finished(scripts[order])
    assert returncode == 0, stderr
    assert "trainable: [True, True]" in stdout
    assert "qlgrad: " not in stderr  # no warning of qlgrad's


@pytest.mark.parametrize("release", UNSUPPORTED)
def test_unsupported_release_warns_once_and_leaves_transformers_alone(scripts, release):
    returncode, stdout, stderr = finished(scripts[release])
    assert returncode == 0, stderr
    assert "trainable: [False, False]" in stdout
    distribution, version = UNSUPPORTED[release]
    warnings = [line for line in stderr.splitlines() if "qlgrad: " in line]
    assert len(warnings) == 1, stderr
    assert f"qlgrad: {distribution} {version} is installed" in warnings[0]
