"""Feature extractors for the metric: any Hugging Face text encoder (mean pooling) and any torch image module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from hf_egt.core.losses import masked_mean


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_text_encoder(model_name_or_path) -> tuple:
    """``(model, tokenizer)`` of a Hugging Face encoder (Hub id or folder), to embed several text sets with one load."""
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(str(model_name_or_path)), AutoTokenizer.from_pretrained(str(model_name_or_path))


@torch.no_grad()
def embed_texts(
    texts: Sequence[str],
    model_name_or_path,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_length: int = 256,
    normalize: bool = False,
    show_progress: bool = True,
) -> torch.Tensor:
    """Embed texts with a Hugging Face encoder: mean of the last hidden states over the tokens (float32, CPU).

    Args:
        texts: the texts.
        model_name_or_path: a Hub id or a local folder (a sentence-transformers folder works, e.g.
            ``hf_egt.apps.offline.minilm_path()``), or an already loaded ``(model, tokenizer)`` pair.
        batch_size: texts per forward pass.
        device: where to run the encoder (default: CUDA when available).
        max_length: truncation length in tokens.
        normalize: L2-normalise the embeddings (as sentence-transformers models with a Normalize module do).
        show_progress: show a tqdm progress bar.
    """
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("`texts` must be a sequence of strings.")
    device = torch.device(device) if device is not None else default_device()
    model, tokenizer = (
        model_name_or_path if isinstance(model_name_or_path, tuple) else load_text_encoder(model_name_or_path)
    )
    model = model.to(device).eval()
    embeddings = []
    for start in tqdm(range(0, len(texts), batch_size), desc="Embedding texts", disable=not show_progress):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        hidden_states = model(**batch).last_hidden_state
        pooled = masked_mean(hidden_states, batch["attention_mask"])[0].float()  # sentence-transformers' mean pooling
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        embeddings.append(pooled.cpu())
    if not embeddings:
        raise ValueError("`texts` is empty.")
    return torch.cat(embeddings)


@torch.no_grad()
def embed_images(
    images,
    module: torch.nn.Module,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Run a torch module (a classifier's feature trunk, an Inception network...) over images in batches and
    return its outputs flattened to ``(num_images, dim)`` (float32, CPU).

    Args:
        images: a tensor ``(N, C, H, W)`` or a sequence of ``(C, H, W)`` tensors, already preprocessed for
            ``module``.
        module: the feature extractor, called as ``module(batch)``.
        batch_size: images per forward pass.
        device: where to run the module (default: CUDA when available).
        show_progress: show a tqdm progress bar.
    """
    device = torch.device(device) if device is not None else default_device()
    module = module.to(device).eval()
    if len(images) == 0:
        raise ValueError("`images` is empty.")
    features = []
    for start in tqdm(range(0, len(images), batch_size), desc="Embedding images", disable=not show_progress):
        batch = images[start : start + batch_size]
        batch = batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))
        output = module(batch.to(device))
        features.append(output.flatten(start_dim=1).float().cpu())
    return torch.cat(features)
