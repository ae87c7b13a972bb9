"""One module per model family, each with a `FAMILY` (model_patches.family.Family).

The registry finds every module here: adding a family is adding one module. A module that
fails to import (a ComfyUI whose internals for that family moved) leaves only that family out.
"""
