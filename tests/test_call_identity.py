"""Each model call is compared only with earlier calls of its own kind, inside the real ComfyUI.

ComfyUI calls the diffusion model several times per step and branch: once per context window,
again for a guidance node's extra pass (skip-layer guidance, LTX-2's STG and modality guidance),
once more per cond of Perp-Neg and dual CFG. Every core node of both hosts that does so is here,
with both methods: caching off is bit-identical with the node in the graph, and with caching on
a replay proves that every cached call reused the residual of its own identity's last computed
call, never another's. The identity the replay uses is derived by the test from what it sees
ComfyUI pass (cond uuid, window frames, which blocks the call replaces, guidance options), not
from the pack's own bookkeeping; the pack must count the same identities.

Listed from both hosts' `comfy_extras` and `comfy/` (what calls `calc_cond_batch` again, sets a
`sampler_calc_cond_batch_function`, runs a post-CFG pass or a context handler): context windows
(ContextWindowsManual, WanContextWindowsManual), SkipLayerGuidanceDiT(Simple), PerpNegGuider,
DualCFGGuider (regular and nested), and on 0.33 LTXVSpatioTemporalGuidance, LTXVModalityGuidance,
LTXVDualCFGGuider and DualModelGuider; multi-GPU threads are tested in test_runtime_layouts.py.
PAG and SAG replace UNet attention only and never reach a DiT's blocks.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Self

import comfy.sample
import comfy.samplers
import pytest
import tiny_models as tm
import torch
from comfy.patcher_extension import WrappersMP
from dit_cache.model_patches.sampling_hooks import BlockHook
from dit_cache.model_patches.sampling_run import CallKinds
from probes import LAYOUTS
from runs import EAGER, OFF, apply, last_run, sample

STEPS = 6
WAN = "wan21_t2v"
FRAMES = 7  # latent frames: the windows below split them into several
GUIDANCE_OPTIONS = frozenset({"stg_self_attn_blocks", "a2v_cross_attn", "v2a_cross_attn"})


def build(node_id: str, model: Any, **inputs: Any) -> Any:
    """A core node's first output for `model`, every input not given at its default on this host."""
    import importlib

    for module in ("nodes_context_windows", "nodes_slg", "nodes_perpneg", "nodes_custom_sampler", "nodes_lt"):
        cls = getattr(importlib.import_module(f"comfy_extras.{module}"), _class_names.get(node_id, node_id), None)
        if cls is not None:
            break
    else:
        pytest.skip(f"{node_id} is not in this ComfyUI")
    kwargs: dict[str, Any] = {}
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            options = entry[1] if len(entry) > 1 else {}
            if name in inputs:
                kwargs[name] = inputs[name]
            elif name == "model":
                kwargs[name] = model
            elif "default" in options:
                kwargs[name] = options["default"]
            elif isinstance(entry[0], list):
                kwargs[name] = entry[0][0]
            elif "options" in options:
                kwargs[name] = options["options"][0]
    return cls.execute(**kwargs)[0]


_class_names = {"ContextWindowsManual": "ContextWindowsManualNode", "WanContextWindowsManual": "WanContextWindowsManualNode",
                "LTXVDualCFGGuider": "LTXVDualCFGGuider"}


def key_of(options: dict) -> list[tuple]:
    """What the test itself sees of a call, one entry per branch: cond, window, replaced blocks, guidance options."""
    window = options.get("context_window")
    frames = (tuple(window.index_list), getattr(window, "causal_anchor_index", None)) if window is not None else None
    dit = options.get("patches_replace", {}).get("dit", {})
    replaced = tuple(sorted(key for key, fn in dit.items() if not isinstance(fn, BlockHook)))
    guidance = tuple(sorted((k, repr(options[k])) for k in GUIDANCE_OPTIONS if k in options))
    return [(uuid, frames, replaced, guidance) for uuid in options["uuids"]]


class CallWatch:
    """Per diffusion-model call (torch hooks and a wrapper outside the pack's): the test's key of each
    branch, the image entering the block stack, block 0's output and the image leaving the stack."""

    def __init__(self, model: Any):
        self.model = model
        self.keys: list[list[tuple]] = []
        self.stack_in: list[torch.Tensor] = []
        self.fn: list[torch.Tensor] = []
        self.out: list[torch.Tensor] = []

    def wrapper(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        options = kwargs.get("transformer_options") or next(a for a in args if isinstance(a, dict) and "sigmas" in a)
        self.keys.append(key_of(options))
        return executor(*args, **kwargs)

    def __enter__(self) -> Self:
        dm = self.model.model.diffusion_model
        layout = LAYOUTS["wan"]
        (embed, flatten), = layout.stack_in
        self.handles = [
            getattr(dm, embed).register_forward_hook(lambda m, a, out: self.stack_in.append(flatten(out).clone())),
            dm.blocks[0].register_forward_hook(lambda m, a, out: self.fn.append(out.clone())),
            getattr(dm, layout.stack_out[0]).register_forward_pre_hook(lambda m, a: self.out.append(a[0].clone())),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def watched(model: Any) -> tuple[Any, CallWatch]:
    """A clone of `model` whose calls a CallWatch sees before the pack's wrapper does (applied before the node)."""
    watch = CallWatch(model)
    clone = model.clone()
    clone.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test.watch", watch.wrapper)
    return clone, watch


def assert_each_identity_replays_its_own(method: str, watch: CallWatch, run: Any) -> None:
    """Every cached call's stack output is its own base plus the residual its own identity (the test's key)
    left at its last computed call; and the pack's identities are the test's keys, one to one."""
    assert len(watch.keys) == len(run.records) == len(watch.out)
    pairs = {(pack, ours) for record, keys in zip(run.records, watch.keys, strict=True)
             for pack, ours in zip(record.branches, keys, strict=True)}
    assert len(pairs) == len({p for p, _ in pairs}) == len({o for _, o in pairs}), "identities are not the test's keys"
    base = watch.stack_in if method == "teacache" else watch.fn  # Cache-DiT: Fn = 1, Bn = 0
    residuals: dict[tuple, torch.Tensor] = {}
    fn_calls = iter(base)
    cached = 0
    for record, keys, out in zip(run.records, watch.keys, watch.out, strict=True):
        first = next(fn_calls)  # block 0 and the embedding run on every call
        for key, base_part, out_part in zip(keys, first.chunk(len(keys)), out.chunk(len(keys)), strict=True):
            if record.computed:
                residuals[key] = out_part - base_part
            else:
                assert torch.equal(out_part, base_part + residuals[key]), f"{key} reused another identity's residual"
        cached += not record.computed
    assert cached > 0, "nothing was cached: the test proves nothing"


def guided_sample(guider: Any, variant: str, steps: int = STEPS, latent: torch.Tensor | None = None) -> torch.Tensor:
    """A guider (SamplerCustomAdvanced's way) on the variant's tiny latent."""
    latent = tm.latent(variant)["samples"] if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, 0)
    sampling = guider.model_patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps).cpu()
    return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0, disable_pbar=True)


def video() -> torch.Tensor:
    return tm.latent(WAN, frames=FRAMES)["samples"]


# --- model-level nodes: the MODEL goes through the node, then through ours ------------------------

MODEL_NODES: dict[str, Callable[[Any], Any]] = {
    "ContextWindowsManual": lambda m: build("ContextWindowsManual", m, context_length=3, context_overlap=1, dim=2),
    "WanContextWindowsManual": lambda m: build("WanContextWindowsManual", m, context_length=9, context_overlap=4),
    "SkipLayerGuidanceDiT": lambda m: build("SkipLayerGuidanceDiT", m, double_layers="1", single_layers="",
                                            start_percent=0.0, end_percent=1.0),
    "SkipLayerGuidanceDiTSimple": lambda m: build("SkipLayerGuidanceDiTSimple", m, double_layers="1", single_layers=""),
    "LTXVSpatioTemporalGuidance": lambda m: build("LTXVSpatioTemporalGuidance", m, blocks="1"),
    "LTXVModalityGuidance": lambda m: build("LTXVModalityGuidance", m),
}
WINDOWED = ("ContextWindowsManual", "WanContextWindowsManual")


def latent_for(node: str) -> torch.Tensor | None:
    return video() if node in WINDOWED else None


@pytest.mark.parametrize("node", list(MODEL_NODES))
@pytest.mark.parametrize("method", ["teacache", "cachedit"])
def test_off_is_bit_identical_with_the_node(models, method, node) -> None:
    with_node = MODEL_NODES[node](models[WAN])
    expected = sample(with_node, WAN, steps=STEPS, cfg=4.0, latent=latent_for(node))
    assert torch.equal(sample(apply(with_node, method, **OFF[method]), WAN, steps=STEPS, cfg=4.0,
                              latent=latent_for(node)), expected)


@pytest.mark.parametrize("node", list(MODEL_NODES))
@pytest.mark.parametrize("method", ["teacache", "cachedit"])
def test_every_cached_call_reuses_its_own_identity(models, method, node, caplog) -> None:
    model, watch = watched(models[WAN])
    patched = apply(MODEL_NODES[node](model), method, **EAGER[method])
    with watch, caplog.at_level(logging.WARNING):
        sample(patched, WAN, steps=STEPS, cfg=4.0, latent=latent_for(node))
    run = last_run(patched, method)
    assert run.disabled is None
    assert not [r for r in caplog.records if r.name.startswith("dit_cache") and r.levelno >= logging.WARNING]
    assert_each_identity_replays_its_own(method, watch, run)
    kinds = {key[1:] for keys in watch.keys for key in keys}
    assert len(kinds) > 1, f"{node} made no call of another kind: the test proves nothing"


@pytest.mark.parametrize("method", ["teacache", "cachedit"])
def test_skip_layer_guidance_keeps_its_correction(models, method) -> None:
    """Its pass runs the positive cond with block 1 replaced: reusing the positive pass's residual would
    make the two equal and SLG's correction zero. Each keeps its own, so they differ on cached calls too."""
    model, watch = watched(models[WAN])
    patched = apply(MODEL_NODES["SkipLayerGuidanceDiT"](model), method, **EAGER[method])
    with watch:
        sample(patched, WAN, steps=STEPS, cfg=4.0, lengths=tm.SPLIT_LENGTHS)  # one call per cond
    records = last_run(patched, method).records
    slg_cond = next(keys[0][0] for keys in watch.keys if keys[0][2])  # the extra pass runs the positive cond
    positive = [out for out, keys in zip(watch.out, watch.keys) if keys[0][0] == slg_cond and not keys[0][2]]
    slg = [out for out, keys in zip(watch.out, watch.keys) if keys[0][2]]
    assert len(positive) == len(slg) == STEPS
    assert any(not r.computed for r in records)
    assert all(not torch.equal(p, s) for p, s in zip(positive, slg, strict=True))


def test_moving_windows_cache_only_against_their_own(models, caplog) -> None:
    """A uniform schedule moves the windows from step to step: a window met for the first time computes."""
    model, watch = watched(models[WAN])
    moving = build("ContextWindowsManual", model, context_length=3, context_overlap=1, dim=2,
                   context_schedule="standard_uniform", context_stride=2)
    patched = apply(moving, "teacache", **EAGER["teacache"])
    with watch, caplog.at_level(logging.WARNING):
        sample(patched, WAN, steps=STEPS, cfg=4.0, latent=video())
    run = last_run(patched, "teacache")
    assert run.disabled is None
    seen: set[tuple] = set()
    met_later = 0
    for record, keys in zip(run.records, watch.keys, strict=True):
        if any(key not in seen for key in keys):
            assert record.computed, "a window met for the first time reused a cache"
            met_later += record.step > 0
        seen.update(keys)
    assert met_later, "the windows did not move: the test proves nothing"
    assert_each_identity_replays_its_own("teacache", watch, run)


# --- guiders: the patched MODEL goes into the guider ------------------------------------------------


def conds(seed: int, length: int = 8) -> Any:
    return tm.conditioning(WAN, seed=seed, length=length)


GUIDERS: dict[str, Callable[[Any], Any]] = {
    "PerpNegGuider": lambda m: build("PerpNegGuider", m, positive=conds(1), negative=conds(2),
                                     empty_conditioning=conds(3), cfg=4.0),
    "DualCFGGuider regular": lambda m: build("DualCFGGuider", m, cond1=conds(1), cond2=conds(4), negative=conds(2),
                                             cfg_conds=4.0, cfg_cond2_negative=2.0, style="regular"),
    "DualCFGGuider nested": lambda m: build("DualCFGGuider", m, cond1=conds(1), cond2=conds(4), negative=conds(2),
                                            cfg_conds=4.0, cfg_cond2_negative=2.0, style="nested"),
    "LTXVDualCFGGuider": lambda m: build("LTXVDualCFGGuider", m, positive=conds(1), negative=conds(2)),
    "DualModelGuider": lambda m: build("DualModelGuider", m, model_negative=m, positive=conds(1), negative=conds(2)),
}


@pytest.mark.parametrize("guider", list(GUIDERS))
@pytest.mark.parametrize("method", ["teacache", "cachedit"])
def test_guiders_off_is_bit_identical_and_each_cond_reuses_its_own(models, method, guider) -> None:
    expected = guided_sample(GUIDERS[guider](models[WAN]), WAN)
    assert torch.equal(guided_sample(GUIDERS[guider](apply(models[WAN], method, **OFF[method])), WAN), expected)

    model, watch = watched(models[WAN])
    patched = apply(model, method, **EAGER[method])
    with watch:
        guided_sample(GUIDERS[guider](patched), WAN)
    run = last_run(patched, method)
    assert_each_identity_replays_its_own(method, watch, run)
    assert len({key for keys in watch.keys for key in keys}) >= 2


# --- what the pack cannot identify, and what it drops ----------------------------------------------


class _OpaqueWindow:
    """A context window as a ComfyUI might pass one whose frames the pack cannot read."""


@pytest.mark.parametrize("method", ["teacache", "cachedit"])
def test_a_window_the_pack_cannot_read_runs_those_calls_untouched(models, method, caplog) -> None:
    def opaque(executor: Any, *args: Any, **kwargs: Any) -> Any:
        options = kwargs.get("transformer_options") or next(a for a in args if isinstance(a, dict) and "sigmas" in a)
        options["context_window"] = _OpaqueWindow()
        return executor(*args, **kwargs)

    model = models[WAN].clone()
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test.opaque", opaque)
    expected = sample(model, WAN, steps=STEPS, cfg=4.0)
    patched = apply(model, method, **EAGER[method])
    with caplog.at_level(logging.WARNING):
        assert torch.equal(sample(patched, WAN, steps=STEPS, cfg=4.0), expected)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("dit_cache") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "_OpaqueWindow" in warnings[0], warnings
    assert last_run(patched, method).calls == 0  # no state read or written


def test_an_identity_not_called_for_a_whole_step_is_retired() -> None:
    """What a guidance pass that stops (its range ends) leaves behind is dropped a step later."""
    kinds = CallKinds()
    model = torch.nn.Linear(1, 1)
    ordinary = {"uuids": ["positive"], "cond_or_uncond": [0], "sigmas": torch.ones(1)}
    extra = {**ordinary, "stg_self_attn_blocks": frozenset({1})}
    (first,) = kinds.identify(ordinary, model, 0)
    (pass_,) = kinds.identify(extra, model, 0)
    assert first != pass_ and (first.kind, pass_.kind) == (0, 1)
    assert kinds.identify(ordinary, model, 1) == (first,) and kinds.retire(1) == []
    assert kinds.identify(ordinary, model, 2) == (first,) and kinds.retire(2) == [pass_]
    assert kinds.identify(extra, model, 3) == (pass_,)  # met again: the same identity, with nothing kept
