#!/usr/bin/env python
"""Min-max (group DRO) LoRA fine-tuning of a diffusers model, with accelerate.

The command is ``hf_egt/apps/train_diffusion.py`` (the options, the output-folder and resume rules, the card, the
push); the loop it runs is library code in ``hf_egt/integrations/diffusion/train.py`` (read it there: an
``Accelerator``, a plain loop over prefetched accumulation windows), so that ``hf-egt train-diffusion`` and this script
run the same code.

Examples:

    # offline: a class-conditional UNet2DModel on the imbalanced digits, worst class at each of 4 noise levels
    python examples/train_egt_diffusion.py --model_name_or_path ./my-ddpm-digits \\
        --dataset digits-imbalanced --resolution 8 --objective minmax --noise_buckets 4 \\
        --per_device_train_batch_size 64 --max_steps 300 --learning_rate 1e-3 --lora_r 8 --output_dir out/digits-minmax

    # the same with a hypernetwork generating the LoRA (and the PLE self-consumption penalty); the output folder
    # holds the plain peft LoRA of the training set's context and the hypernetwork in hypernetwork/
    python examples/train_egt_diffusion.py --model_name_or_path ./my-ddpm-digits \\
        --dataset digits-imbalanced --resolution 8 --objective minmax --noise_buckets 4 --lora_r 8 --lora_conv \\
        --hyper --ple_weight 0.1 --ple_every 8 --learning_rate 3e-4 --max_steps 300 --output_dir out/digits-hyper

    # Stable Diffusion LoRA on a Hub dataset with a caption and a group column, 2 GPUs, bf16
    accelerate launch --num_processes 2 examples/train_egt_diffusion.py \\
        --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --dataset <user>/<dataset> --caption_column text --group_column gender --resolution 512 \\
        --mixed_precision bf16 --objective minmax --noise_buckets 4 --validation_steps 500 --push_to_hub
"""

from hf_egt.apps.train_diffusion import main, parse_args

if __name__ == "__main__":
    main(parse_args())
