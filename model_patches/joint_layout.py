"""The order of the joint (text + image) sequence that Flux's and HunyuanVideo's last blocks run on.

ComfyUI decides it per version (0.33 put the text first in HunyuanVideo). A run reads it from
ComfyUI (`img_slice`) where it is passed, and verifies it once against the two streams the
blocks before handed over; a sequence it cannot account for stops caching.
"""

from __future__ import annotations

import torch

from .family import BlockArgs


class LayoutMismatch(RuntimeError):
    """A joint sequence laid out in no order the pack can verify: caching it would corrupt the image."""


class JointLayout:
    """One run's verified order of the joint sequence (None until verified)."""

    def __init__(self, family_name: str):
        self.family_name = family_name
        self.text_first: bool | None = None

    def verify(self, img: torch.Tensor, txt: torch.Tensor, args: BlockArgs) -> None:
        """Find the order: ComfyUI's `img_slice` where given, checked against the streams (img, txt) before."""
        joint = args["img"]
        img_slice = (args.get("transformer_options") or {}).get("img_slice")
        orders = (True, False) if img_slice is None else (img_slice[0] > 0,)
        for text_first in orders:
            expected_slice = (txt.shape[1], joint.shape[1]) if text_first else (0, img.shape[1])
            if img_slice is not None and tuple(img_slice) != expected_slice:
                continue
            expected = torch.cat((txt, img) if text_first else (img, txt), dim=1)
            if expected.shape == joint.shape and torch.equal(expected, joint):
                self.text_first = text_first
                return
        told = f"at ComfyUI's img_slice {list(img_slice)}" if img_slice is not None else "in either order"
        raise LayoutMismatch(
            f"{self.family_name}: the first joint block's input is not the image and text streams "
            f"of the block before it {told}"
        )

    def _text_first(self) -> bool:
        if self.text_first is None:
            raise LayoutMismatch(f"{self.family_name}: the joint sequence's order is not verified in this run")
        return self.text_first

    def image_part(self, joint: torch.Tensor, img_len: int, txt_len: int) -> torch.Tensor:
        start = txt_len if self._text_first() else 0
        return joint[:, start : start + img_len]

    def join(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """The sequence joint blocks run on, in the verified order."""
        return torch.cat((txt, img) if self._text_first() else (img, txt), dim=1)

    def split(self, joint: torch.Tensor, img_len: int, txt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(img, txt) of a joint sequence: the inverse of `join`."""
        if self._text_first():
            return joint[:, txt_len:], joint[:, :txt_len]
        return joint[:, :img_len], joint[:, img_len:]
