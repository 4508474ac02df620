"""Fine-tuning an int8 model through qlgrad's input gradients.

    python -m qlgrad.demo [--steps N] [--rank R] [--seed S] [--precision P] [--nproc P]

1. The problem: the input gradient of an int8 residual MLP as stock PyTorch computes
   it (in a child process without qlgrad) and as qlgrad does, each compared with the
   float64 straight-through reference (``qlgrad.reference``).
2. A small float MLP learns scikit-learn's 8x8 handwritten digits and is quantized
   with ``quantize_dynamic``; on a shifted task (the digits rotated, with noise) the
   int8 model's accuracy drops.
3. PEFT's LoRA adapters beside the frozen int8 layers (``qlgrad.peft``) learn the shifted
   task, trained through the int8 layers (with ``--nproc`` > 1 by DistributedDataParallel
   over local processes), and the same adapters on the float model, for the time per step.
4. The fine-tuned int8 model's input gradient is checked against the reference.

Modules: ``cli`` (the run and its command line), ``digits`` (data, classifier, training),
``lora`` (the adapters), ``residual_mlp`` (step 1's model), ``data_parallel`` (local
processes). Needs scikit-learn, for its bundled digits data set, and PEFT
(``pip install 'qlgrad[demo]'``).
"""
