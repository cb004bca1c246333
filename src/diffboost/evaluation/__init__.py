"""Evaluation: segmentation metrics on whole cases at their original size and spacing."""

from .metrics import METRICS, SegmentationMetric, case_metrics, surface_distances

__all__ = ["METRICS", "SegmentationMetric", "case_metrics", "surface_distances"]
