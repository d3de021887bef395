"""MELTR: meta-learned combination of pretext-task losses for fine-tuning (core: torch + torchopt)."""
