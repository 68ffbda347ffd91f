"""The EGT metric core: per-group divergences between real and generated samples, and their summaries."""

from .summary import summarize_groups

__all__ = ["summarize_groups"]
