"""TeaCache presets: rescale coefficients per model, with where they come from.

Coefficients are numpy.poly1d order (highest power first). Only the sources named here
published them; a preset marked `borrowed` reuses another model's fit and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TeaCachePreset:
    name: str
    family: str  # the model_patches family it was made for
    coefficients: tuple[float, ...]
    recommended_thresh: float
    source: str
    indicator: str = "modulated"  # Wan: "e" (time embedding) or "e0" (its projection, "ret" mode)
    warmup_steps: int = 1
    force_last_step: bool = True
    borrowed: str | None = None  # the preset whose fit this one reuses

    def describe(self) -> str:
        fitted = f"borrowed from {self.borrowed}, not fitted for this model" if self.borrowed else "fitted"
        return f"{self.name} ({fitted}; source: {self.source})"


_FLUX = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)
_HUNYUAN = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)
_WAN_T2V_1_3B = (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01)
_WAN_T2V_14B = (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404)


def _wan(name: str, coefficients: tuple[float, ...], thresh: float, borrowed: str | None = None) -> TeaCachePreset:
    """TeaCache4Wan2.1's default mode: indicator e, first step and last step compute."""
    return TeaCachePreset(name, "wan", coefficients, thresh, "TeaCache4Wan2.1", indicator="e", borrowed=borrowed)


def _wan_ret(name: str, coefficients: tuple[float, ...], thresh: float) -> TeaCachePreset:
    """TeaCache4Wan2.1's "ret steps" mode: indicator e0, 5 warm-up steps, last step not forced."""
    return TeaCachePreset(
        name, "wan", coefficients, thresh, "TeaCache4Wan2.1 (ret mode)", "e0", warmup_steps=5, force_last_step=False
    )


PRESETS: dict[str, TeaCachePreset] = {
    p.name: p
    for p in (
        TeaCachePreset("flux", "flux", _FLUX, 0.4, "TeaCache4FLUX"),
        TeaCachePreset(
            "flux_kontext",
            "flux",
            (-1.04655119e03, 3.12563399e02, -1.69500694e01, 4.10995971e-01, 3.74537863e-02),
            0.4,
            "ComfyUI-TeaCache",
        ),
        TeaCachePreset("hunyuan_video", "hunyuan_video", _HUNYUAN, 0.15, "TeaCache4HunyuanVideo"),
        _wan("wan2.1_t2v_1.3B", _WAN_T2V_1_3B, 0.08),
        _wan("wan2.1_t2v_14B", _WAN_T2V_14B, 0.2),
        _wan(
            "wan2.1_i2v_480p_14B",
            (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01),
            0.26,
        ),
        _wan("wan2.1_i2v_720p_14B", (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683), 0.3),
        _wan_ret(
            "wan2.1_t2v_1.3B_ret",
            (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
            0.05,
        ),
        _wan_ret(
            "wan2.1_t2v_14B_ret",
            (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
            0.1,
        ),
        _wan_ret(
            "wan2.1_i2v_480p_14B_ret",
            (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
            0.2,
        ),
        _wan_ret(
            "wan2.1_i2v_720p_14B_ret",
            (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
            0.2,
        ),
        _wan("wan2.2_t2v_14B", _WAN_T2V_14B, 0.2, borrowed="wan2.1_t2v_14B"),
        _wan("wan2.2_ti2v_5B", _WAN_T2V_1_3B, 0.08, borrowed="wan2.1_t2v_1.3B"),
        TeaCachePreset("flux2", "flux", _FLUX, 0.4, "TeaCache4FLUX", borrowed="flux"),
        TeaCachePreset(
            "hunyuan_video_1.5", "hunyuan_video", _HUNYUAN, 0.15, "TeaCache4HunyuanVideo", borrowed="hunyuan_video"
        ),
        TeaCachePreset("qwen_image", "qwen_image", _FLUX, 0.4, "TeaCache4FLUX", borrowed="flux"),
        TeaCachePreset("qwen_image_edit", "qwen_image", _FLUX, 0.4, "TeaCache4FLUX", borrowed="flux"),
        TeaCachePreset(
            "z_image", "z_image", _HUNYUAN, 0.15, "TeaCache4HunyuanVideo (as SGLang does)", borrowed="hunyuan_video"
        ),
    )
}

MODEL_TYPES: tuple[str, ...] = ("auto", *PRESETS)


def parse_coefficients(text: str) -> tuple[float, ...] | None:
    """Parse a user's override ("a, b, c, d, e"); empty text means "use the preset"."""
    text = text.strip().strip("[]()")
    if not text:
        return None
    try:
        values = tuple(float(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"coefficients: cannot parse {text!r}; give comma-separated finite numbers, highest power "
            "first, e.g. '498.65, -283.78, 55.86, -3.82, 0.264', or leave it empty to use the preset"
        )
    return values
