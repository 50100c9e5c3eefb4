"""Hugging Face layouts: each family's converter to and from transformers
checkpoints (`NAME.py`) and what they share (`layout.py`)."""
