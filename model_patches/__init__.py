"""Per-family glue between ComfyUI's DiT forwards and the methods in `caching/`."""
