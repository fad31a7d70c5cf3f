"""Hugging Face model folders: packed as one model version, checked, loaded with
``transformers`` (never ``trust_remote_code``), tokenized with ``tokenizers``."""
