"""Bundled gin configs, installed as package data (found without --gin_search_paths)."""
