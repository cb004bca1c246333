"""Export to the raw-dataset layouts other tools read: nnU-Net v2 and the Medical Segmentation Decathlon."""

from .datasets import ExportConfig, export_dataset

__all__ = ["ExportConfig", "export_dataset"]
