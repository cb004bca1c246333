"""Prompts: the paper's "modality, organ, category" triplet, or any free text."""

from __future__ import annotations

import re

from ..config import PromptConfig


def build_prompt(cfg: PromptConfig, modality: str | None, organ: str | None, category: str | None) -> str:
    """Format the prompt template; config values override what the source provides.

    Missing parts are dropped with their separators, so a folder of PNGs without metadata still
    gets a clean prompt ("normal" rather than ", , normal").
    """
    fields = {
        "modality": cfg.modality or modality or "",
        "organ": cfg.organ or organ or "",
        "category": cfg.category or category or "normal",
    }
    try:
        text = cfg.template.format(**fields)
    except (KeyError, IndexError) as e:
        raise ValueError(
            f"prompt template {cfg.template!r} uses an unknown field {e}; use {{modality}}, {{organ}}, {{category}}"
        ) from None
    text = re.sub(r"(\s*,\s*)+", ", ", text)  # collapse separators left by empty fields
    return text.strip(" ,")


def site_style(device: str | None, site: str) -> str:
    """The name a target site's images carry in their prompts (cross-site sets): the scanner, without the
    probe's frequency (BUS-BRA's ``GE Logiq 7 @10-14MHz`` -> ``GE Logiq 7``), else the site's folder name."""
    name = re.split(r"\s+@", device or "", maxsplit=1)[0].strip(" ,")
    return name or site
