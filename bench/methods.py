"""The methods under test, each applied through its real node (ours, or ComfyUI's EasyCache) to a MODEL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import comfy.patcher_extension
from comfy_extras.nodes_easycache import EasyCacheNode
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from dit_cache.nodes.teacache_node import ApplyTeaCache

UNCACHED = "uncached"
EASYCACHE = "EasyCache"
TEACACHE = "TeaCache"


@dataclass(frozen=True)
class Method:
    """One setting of one method: ``curve`` groups the settings of a sweep into one line of the plot."""

    curve: str
    setting: str
    apply: Callable[[Any], Any] = field(compare=False, repr=False)  # MODEL -> patched MODEL

    @property
    def label(self) -> str:
        return f"{self.curve} {self.setting}".strip()


def _our_node(node: Any, **settings: Any) -> Callable[[Any], Any]:
    """Our node with `settings`; every other input keeps the node's default."""

    def apply(model: Any) -> Any:
        (patched,) = node.execute(model, **settings)
        return patched

    return apply


def uncached() -> Method:
    return Method(UNCACHED, "", lambda model: model)


def _copy_input(executor: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    return executor(x.clone(), *args, **kwargs)


def easycache(reuse_threshold: float, start_percent: float = 0.15, end_percent: float = 0.95) -> Method:
    """ComfyUI's own EasyCache node (its defaults: start 0.15, end 0.95), given a copy of the model's input.

    On a skipped step ComfyUI 0.3.75's EasyCache adds its cached difference into the diffusion model's input
    in place. When the model runs in the latent's dtype (fp32, as on our CPU) that input is the very tensor
    the sampler then uses to compute the denoised latent, so every skipped step is corrupted (about 20 dB
    lower PSNR here). In bf16/fp16, as on a GPU, ComfyUI casts the input to a new tensor first, which is
    what the copy reproduces: EasyCache is measured as GPU users run it.
    """

    def apply(model: Any) -> Any:
        copying = model.clone()
        copying.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "bench.copy_input",
                                     _copy_input)
        out = EasyCacheNode.execute(copying, reuse_threshold, start_percent, end_percent, False)
        return out.result[0]

    return Method(EASYCACHE, f"reuse_threshold {reuse_threshold:g}", apply)


def teacache(rel_l1_thresh: float, **settings: Any) -> Method:
    """Apply TeaCache with the model's auto preset unless ``settings`` say otherwise."""
    extra = "".join(f", {k} {v}" for k, v in settings.items())
    return Method(TEACACHE, f"rel_l1_thresh {rel_l1_thresh:g}{extra}",
                  _our_node(ApplyTeaCache, rel_l1_thresh=rel_l1_thresh, **settings))


def cachedit(curve: str, setting: str, **settings: Any) -> Method:
    return Method(curve, setting, _our_node(ApplyCacheDiT, **settings))


CALIBRATORS = (("none", 1), ("taylorseer", 1), ("taylorseer", 2), ("foca", 1), ("dmd", 1))  # (calibrator, order)


def calibrator_name(calibrator: str, order: int = 1) -> str:
    return {"none": "", "taylorseer": f" + TaylorSeer O{order}", "foca": " + FoCa", "dmd": " + DMD"}[calibrator]


def dbcache(
    fn: int, threshold: float, *, calibrator: str = "none", taylorseer_order: int = 1, **settings: Any
) -> Method:
    """DBCache FnB0 with max_continuous_cached_steps 3 (the node's default), optionally with a calibrator."""
    curve = f"DBCache F{fn}B0" + calibrator_name(calibrator, taylorseer_order)
    return cachedit(curve, f"threshold {threshold:g}", Fn_compute_blocks=fn, Bn_compute_blocks=0,
                    residual_diff_threshold=threshold, max_continuous_cached_steps=3, calibrator=calibrator,
                    taylorseer_order=taylorseer_order, **settings)


def cadence(calibrator: str, order: int, streak: int, warmup: int = 2) -> Method:
    """DBCache F1B0 on a fixed cadence: threshold 1 caches every step the gates allow, so after `warmup` steps
    one step computes and `streak` cache, for every calibrator alike: the same compute, forecast differently."""
    curve = f"DBCache F1B0 W{warmup} cadence" + calibrator_name(calibrator, order)
    return cachedit(curve, f"{streak} cached per computed step", Fn_compute_blocks=1, Bn_compute_blocks=0,
                    residual_diff_threshold=1.0, max_warmup_steps=warmup, max_continuous_cached_steps=streak,
                    calibrator=calibrator, taylorseer_order=order)


STREAKS = (1, 2, 3, 4, 6, 9)


def scm(preset: str, policy: str, **settings: Any) -> Method:
    """An SCM step mask preset over DBCache F1B0 (static: the mask alone decides; dynamic: masked steps may
    still compute when the residual diff is above the threshold, 0.24 by default)."""
    return cachedit(f"SCM {policy}", preset, scm_preset=preset, scm_policy=policy, **settings)


SCM_PRESETS = ("slow", "medium", "fast", "ultra")


def fidelity_methods(fn_large: int, teacache_thresholds: tuple[float, ...], quick: bool) -> list[Method]:
    """Every method and sweep of the fidelity runs (``quick``: a thinner sweep)."""
    easy = (0.05, 0.1, 0.2, 0.4, 0.8) if quick else (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2)
    db = (0.08, 0.16, 0.32) if quick else (0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.5, 0.8)
    taylor = (0.12, 0.32) if quick else (0.08, 0.12, 0.16, 0.24, 0.32, 0.5)
    tea = teacache_thresholds[::2] if quick else teacache_thresholds
    methods = [uncached()]
    methods += [easycache(t) for t in easy]
    methods += [teacache(t) for t in tea]
    methods += [dbcache(1, t) for t in db]
    methods += [dbcache(fn_large, t) for t in db]
    methods += [dbcache(1, t, calibrator="taylorseer", taylorseer_order=order) for order in (1, 2) for t in taylor]
    methods += [dbcache(1, t, calibrator=name) for name in ("foca", "dmd") for t in taylor]
    streaks = STREAKS[1::2] if quick else STREAKS
    methods += [cadence(name, order, k) for name, order in CALIBRATORS for k in streaks]
    methods += [scm(p, policy) for policy in ("static", "dynamic") for p in SCM_PRESETS]
    return methods
