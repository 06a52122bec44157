"""Test helpers: tiny HF models, t5x-layout checkpoint writers."""
