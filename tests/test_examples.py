"""The Captum and language-model examples, the README's PEFT section and docs/integrations.md's
Captum, torch.func, autocast and torch.compile sections run as they are written."""

import re

import pytest
import torch

from helpers import REPOSITORY, load_example


def readme_code(heading: str, page: str = "README.md") -> str:
    """The Python code blocks of the section titled ``heading`` of ``page`` (the README, or a page
    under docs/), up to the next heading of its level or above."""
    with open(REPOSITORY / page, encoding="utf-8") as readme:
        text = readme.read()
    level, title = heading.split(" ", 1)
    start = text.index(f"\n{heading}\n")
    end = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(text, start + len(heading) + 2)
    section = text[start : end.start() if end else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, f"no python code in the {page} section {title!r}"
    return "\n".join(blocks)


def test_captum_example_attributions_of_int8_and_float_models_agree(capsys):
    mean_cosines = load_example("attribution").main(["--digits", "20", "--steps", "8"])
    assert set(mean_cosines) == {"Saliency", "IntegratedGradients"}
    assert all(cosine > 0.98 for cosine in mean_cosines.values())
    assert "IntegratedGradients" in capsys.readouterr().out


def test_llm_lora_example_fine_tunes_an_int8_language_model(tmp_path, capsys):
    results = load_example("llm_lora").main(["--small", "--output", str(tmp_path)])
    before, after = results["before"], results["after"]
    assert after["eval_count_down_loss"] < before["eval_count_down_loss"] / 10  # the new rule, learned
    assert results["quantized_forwards_per_step"] == 2  # checkpointing recomputed every int8 layer
    assert results["reloaded_logits_equal"]
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert all(len(text.split()) == 6 for text in before["continuations"] + after["continuations"])
    assert after["continuations"] != before["continuations"]
    assert "greedy continuations" in capsys.readouterr().out


# torch's int4 packing on a bfloat16 model, and on a float32 one in the Trainer's mixed precision
# (its int4 layers meet activations that earlier layers left in bfloat16, beside float32 parameters).
@pytest.mark.parametrize(
    "quantization, dtype, mixed_precision",
    [("torchao-int4", "bfloat16", []), ("torchao-int4", "float32", ["--bf16"]), ("torchao-int8", "float32", [])],
)
def test_llm_lora_example_fine_tunes_a_torchao_model_loaded_by_transformers(
    quantization, dtype, mixed_precision, tmp_path
):
    # A shorter run: one layer, 20 steps of each training.
    arguments = ["--layers", "1", "--pretraining-steps", "20", "--steps", "20", "--output", str(tmp_path)]
    results = load_example("llm_lora").main(
        ["--quantization", quantization, "--dtype", dtype, *mixed_precision, *arguments]
    )
    before, after = results["before"], results["after"]
    assert after["eval_count_down_loss"] < before["eval_count_down_loss"] / 1.5
    assert results["quantized_forwards_per_step"] == 2
    assert results["reloaded_logits_equal"]
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_llm_lora_example_refuses_bfloat16_with_quantize_dynamic(capsys):
    with pytest.raises(SystemExit):
        load_example("llm_lora").main(["--dtype", "bfloat16"])
    assert "quantize_dynamic quantizes float32 layers only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "page, heading",
    [
        ("README.md", "## PEFT: LoRA fine-tuning of int8 models"),
        ("docs/integrations.md", "## Captum: attributions of int8 models"),
        ("docs/integrations.md", "## torch.func"),
        ("docs/integrations.md", "## Autocast"),
        ("docs/integrations.md", "## torch.compile"),
    ],
)
def test_documented_code_runs(page, heading, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the PEFT section saves adapters to the working directory
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    # The torch.compile section changes inductor's configuration: for this test only.
    with inductor_config.patch(fx_graph_cache=inductor_config.fx_graph_cache):
        exec(compile(readme_code(heading, page), f"{page}, {heading}", "exec"), {})
    torch._dynamo.reset()
