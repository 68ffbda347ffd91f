"""Min-max (group DRO) LoRA fine-tuning of diffusers models.

Building blocks of ``hf-egt train-diffusion`` (``hf_egt.apps.train_diffusion``, ``examples/train_egt_diffusion.py``);
the training loop itself is :func:`hf_egt.integrations.diffusion.train.train`:

- :mod:`~hf_egt.integrations.diffusion.data`: image datasets with a group column, and the offline ``digits-imbalanced``
  set;
- :mod:`~hf_egt.integrations.diffusion.models`: load a ``UNet2DModel`` (unconditional or class-conditional) or a Stable
  Diffusion pipeline's parts from a Hub id or a folder;
- :mod:`~hf_egt.integrations.diffusion.losses`: per-example denoising losses and noise-level buckets (pure functions);
- :mod:`~hf_egt.integrations.diffusion.buckets`: the group objective kept per noise-level bucket ("worst group at each
  noise
  level");
- :mod:`~hf_egt.integrations.diffusion.lora`: LoRA on the UNet (peft) and saving it in formats the plain libraries load;
- :mod:`~hf_egt.integrations.diffusion.sampling`: per-group sampling and image grids for validation;
- :mod:`~hf_egt.integrations.diffusion.classifier`: a small digit classifier whose features serve the EGT metric.

diffusers, datasets and scikit-learn are imported by the submodules that need them, never here.
"""
