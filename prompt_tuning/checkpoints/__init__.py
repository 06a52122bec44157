"""Checkpoint import (HuggingFace, t5x), the native format, and conversion."""
