"""Segments: the condition language, its evaluation and membership."""
