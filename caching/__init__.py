"""Caching methods, free of ComfyUI imports so they can be unit-tested on their own."""
