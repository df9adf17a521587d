"""Staged multimodal fine-tuning of vision-language models on mixed image-text and text-only data."""
