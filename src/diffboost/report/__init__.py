"""The run report: Table II, per-case box plots, synthetic variants, Algorithm 1's mixing,
segmentation overlays, training curves and provenance, as Markdown and self-contained HTML."""

from .build import write_report

__all__ = ["write_report"]
