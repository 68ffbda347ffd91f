"""Integrations with the Hugging Face libraries, built on ``hf_egt.core``.

``trainer`` (transformers ``Trainer`` and TRL ``SFTTrainer``), ``diffusion`` (diffusers), ``hyper`` (the HyperLoRA peft
method), ``features`` and ``evaluation`` (encoders and language-model measurement), ``hub`` (model cards and safe
uploads). Nothing here imports ``hf_egt.apps``.
"""
