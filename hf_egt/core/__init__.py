"""The pure core: the group objective, per-token losses, group samplers, safetensors state, and the EGT estimators.

Tensors and arrays in, tensors and arrays out: nothing here imports transformers, peft, diffusers, TRL, evaluate or
any application, so the trainers, the diffusion script and the evaluate module all reuse one implementation.
"""
