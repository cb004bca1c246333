"""Stages 1-2: the text + edge conditioned diffusion model, its training and its pipeline.

- :mod:`.models` — the ``small`` from-scratch denoiser (``ModelConfig``), its condition (the edge
  map, or the edge map + the filled mask) and its injection (concatenation or a ControlNet branch);
- :mod:`.sd15` — Stable Diffusion 1.5 + ControlNet from a user's local checkpoint;
- :mod:`.text` — the text encoders (the packaged MiniLM by default);
- :mod:`.train` — pretraining and fine-tuning with accelerate (``TrainConfig``, ``train_diffusion``);
- :mod:`.pipeline` — ``DiffBoostPipeline``: one ``__call__`` from noise (or an image) to variants,
  saved and loaded diffusers-style.
"""

from .models import ModelConfig
from .pipeline import DiffBoostPipeline
from .train import TrainConfig, train_diffusion

__all__ = ["DiffBoostPipeline", "ModelConfig", "TrainConfig", "train_diffusion"]
