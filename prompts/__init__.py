"""Prompt templates as versioned text files, loaded with importlib.resources."""
