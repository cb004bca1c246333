"""The two conditions of the diffusion model: the text prompt and the edge map."""

from .edges import mask_boundary, soft_edges, task_condition
from .prompts import build_prompt

__all__ = ["build_prompt", "mask_boundary", "soft_edges", "task_condition"]
