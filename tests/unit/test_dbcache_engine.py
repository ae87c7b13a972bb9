"""Our DBCache engine decides exactly as cache-dit's own code does.

The reference runs cache-dit's real block wrapper (CachedBlocks_Pattern_*.forward with a
CachedContextManager and cache-dit's configs) over a tiny scripted transformer; our side runs the
same blocks by hand, the way the ComfyUI glue will (Fn blocks, can_cache, then approximate or
middle blocks + store, then Bn blocks), and must make the same decision at every step, record the
same diffs and give the same outputs.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import sys
from dataclasses import FrozenInstanceError, dataclass, fields, replace
from pathlib import Path

import pytest
import torch
from dit_cache.caching.calibrators import CacheDitNotInstalledError
from dit_cache.caching.dbcache import DBCacheBranch, DBCacheConfig

cache_dit = pytest.importorskip("cache_dit")
from cache_dit.caching.cache_blocks.pattern_0_1_2 import CachedBlocks_Pattern_0_1_2
from cache_dit.caching.cache_blocks.pattern_3_4_5 import CachedBlocks_Pattern_3_4_5
from cache_dit.caching.cache_contexts.cache_manager import CachedContextManager

# ---------------------------------------------------------------------------------------------
# A tiny scripted transformer. Each block adds a per-step, per-branch tensor whose size follows a
# scripted sequence of relative changes (slow and fast ones), bent a little by its input so that
# the Bn blocks see whether the middle state was computed or approximated. A run may change its
# image token count midway (as a resolution change would) to exercise the shape-change paths.

DIM, TOKENS, TEXT_TOKENS = 8, 12, 4
RATES = [0.01, 0.03, 0.02, 0.12, 0.04, 0.3, 0.015, 0.6, 0.05, 0.02, 0.2, 0.01, 0.08, 0.45, 0.025]
MODELS = {"F1B0": (4, 1, 0), "F2B1": (4, 2, 1), "F3B2": (8, 3, 2)}  # blocks, Fn, Bn


class Clock:
    """Which step and CFG branch the blocks are being called for."""

    step = 0
    branch = 0


class Script:
    """The tensors each block adds, per branch, block and step."""

    def __init__(self, blocks: int, steps: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.image: dict[tuple[int, int, int], torch.Tensor] = {}
        self.text: dict[tuple[int, int, int], torch.Tensor] = {}
        for branch in range(2):
            offset = 3 * branch + seed
            for block in range(blocks):
                a, b = torch.randn(2, 1, TOKENS, DIM, generator=gen)
                c, d = torch.randn(2, 1, TEXT_TOKENS, DIM, generator=gen)
                scale = 1.0
                for step in range(steps):
                    scale *= 1.0 + RATES[(step + offset + block) % len(RATES)] * (-1) ** (step // 5)
                    turn = 0.15 * step
                    self.image[branch, block, step] = scale * (a + turn * b)
                    self.text[branch, block, step] = 0.5 * scale * (c - turn * d)
        self.latents = [torch.randn(1, TOKENS, DIM, generator=gen) for _ in range(2)]
        self.context = [torch.randn(1, TEXT_TOKENS, DIM, generator=gen) for _ in range(2)]

    def inputs(self, step: int, branch: int, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.latents[branch] * (1.0 - 0.5 * step / case.steps)
        if case.reshape_at is not None and step >= case.reshape_at:
            latents = latents[:, : TOKENS - 4]
        return latents, self.context[branch]


class DualBlock(torch.nn.Module):
    """(hidden, encoder) -> (hidden, encoder), cache-dit's Pattern_0."""

    def __init__(self, index: int, script: Script, clock: Clock):
        super().__init__()
        self.index, self.script, self.clock = index, script, clock

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.clock.branch, self.index, self.clock.step)
        added = self.script.image[key][:, : hidden_states.shape[1]]
        hidden = hidden_states + added * (1.0 + 0.2 * torch.tanh(hidden_states))
        hidden = hidden + 0.05 * encoder_hidden_states.mean(dim=1, keepdim=True)
        encoder = encoder_hidden_states + self.script.text[key] * (1.0 + 0.2 * torch.tanh(encoder_hidden_states))
        return hidden, encoder


class SingleBlock(torch.nn.Module):
    """hidden -> hidden, cache-dit's Pattern_3."""

    def __init__(self, index: int, script: Script, clock: Clock):
        super().__init__()
        self.index, self.script, self.clock = index, script, clock

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        key = (self.clock.branch, self.index, self.clock.step)
        added = self.script.image[key][:, : hidden_states.shape[1]]
        return hidden_states + added * (1.0 + 0.2 * torch.tanh(hidden_states))


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    model: str = "F1B0"
    dual: bool = True
    threshold: float = 0.2
    warmup: int = 2
    interval: int = 1
    max_cached: int = -1
    max_continuous: int = -1
    max_accumulated: float | None = None
    calibrator: tuple[str, int, str] | None = None  # (calibrator, taylorseer_order, calibrator_cache_type)
    scm: tuple[str, str] = ("none", "dynamic")
    steps: int = 28
    separate_cfg: bool = False
    reshape_at: int | None = None  # step from which the image stream has fewer tokens

    def config(self) -> DBCacheConfig:
        _, fn, bn = MODELS[self.model]
        custom = self.scm[0] == "custom"
        return DBCacheConfig(
            Fn_compute_blocks=fn,
            Bn_compute_blocks=bn,
            residual_diff_threshold=self.threshold,
            max_warmup_steps=self.warmup,
            warmup_interval=self.interval,
            max_cached_steps=self.max_cached,
            max_continuous_cached_steps=self.max_continuous,
            max_accumulated_residual_diff_threshold=self.max_accumulated,
            calibrator=self.calibrator[0] if self.calibrator else "none",
            taylorseer_order=self.calibrator[1] if self.calibrator else 1,
            calibrator_cache_type=self.calibrator[2] if self.calibrator else "residual",
            scm_preset=self.scm[0],
            scm_compute_bins=CUSTOM_BINS[0] if custom else (),
            scm_cache_bins=CUSTOM_BINS[1] if custom else (),
            scm_policy=self.scm[1],
        )

    @property
    def id(self) -> str:
        ts = f"{self.calibrator[0]}{self.calibrator[1]}{self.calibrator[2][0]}" if self.calibrator else "none"
        return (
            f"{self.model}-{'dual' if self.dual else 'single'}-R{self.threshold}-W{self.warmup}I{self.interval}"
            f"-M{self.max_cached}MC{self.max_continuous}-A{self.max_accumulated}-{ts}"
            f"-SCM{self.scm[0]}{self.scm[1][0]}-N{self.steps}-{'cfg2' if self.separate_cfg else 'cfg1'}"
            + (f"-reshape{self.reshape_at}" if self.reshape_at is not None else "")
        )


# 14 compute + 15 cache steps; the short first compute bin cuts a 4-step warmup to 2 steps.
CUSTOM_BINS = ((2, 3, 2, 2, 1, 1, 3), (2, 3, 3, 4, 3))
AXES = {
    "model": list(MODELS),
    "dual": [True, False],
    "threshold": [0.0, 0.05, 0.2, 0.5, 1.0],
    "warmup": [0, 2, 4],
    "interval": [1, 2],
    "max_cached": [-1, 3],
    "max_continuous": [-1, 1, 3],
    "max_accumulated": [None, 0.5],
    "calibrator": [None]
    + [("taylorseer", order, kind) for order, kind in itertools.product([1, 2, 3], ["residual", "hidden_states"])]
    + [(name, 1, kind) for name in ("foca", "dmd") for kind in ("residual", "hidden_states")],
    "scm": [("none", "dynamic")]
    + list(itertools.product(["slow", "medium", "fast", "ultra", "custom"], ["dynamic", "static"])),
    "steps": [28, 20],
    "separate_cfg": [False, True],
}


def build_cases() -> list[Case]:
    """Every value of every axis, each SCM preset x policy x step count, plus a seeded sample."""
    rng = random.Random(20240607)

    def draw(**fixed: object) -> Case:
        values = {name: rng.choice(options) for name, options in AXES.items()}
        values.update(fixed)
        return Case(**values)

    cases = [draw(**{name: value}) for name, options in AXES.items() for value in options]
    cases += [draw(scm=scm, steps=steps) for scm in AXES["scm"][1:] for steps in (28, 20, 12, 9, 8)]
    cases += [draw(scm=(preset, "dynamic"), warmup=4, interval=i) for preset in ("custom", "ultra") for i in (1, 2)]
    cases += [draw(calibrator=c, threshold=t) for c in AXES["calibrator"][1:] for t in (0.2, 0.5)]
    cases += [draw(calibrator=c, max_continuous=-1, threshold=0.5) for c in AXES["calibrator"][1:]]  # long streaks
    cases += [draw(scm=("fast", "dynamic"), steps=6), draw(scm=("ultra", "static"), steps=4)]
    cases += [draw() for _ in range(160)]
    # A shape change mid-run (cache-dit records -2 and computes; calibrators restart). Not under
    # a static mask nor a threshold >= 1: cache-dit would add a residual of the old shape there.
    cases += [
        draw(reshape_at=at, threshold=t, scm=("none", "dynamic"), max_accumulated=acc)
        for at in (5, 11)
        for t in (0.2, 0.5)
        for acc in (None, 0.6)
    ]
    cases += [draw(calibrator=None) for _ in range(120)]
    unique = {case.id: case for case in cases}
    return list(unique.values())


CASES = build_cases()


# ---------------------------------------------------------------------------------------------
# The two runs


@dataclass
class Run:
    outputs: list[list[torch.Tensor]]  # per call: the final streams
    cached_steps: list[list[int]]  # per branch
    residual_diffs: list[dict[int, float]]  # per branch


def reference_mask(case: Case) -> list[int] | None:
    """cache-dit's own mask; below 8 steps SCM is off by our documented choice."""
    preset, _ = case.scm
    if preset == "none" or case.steps < 8:
        return None
    if preset == "custom":
        return cache_dit.steps_mask(list(CUSTOM_BINS[0]), list(CUSTOM_BINS[1]), total_steps=case.steps)
    return cache_dit.steps_mask(total_steps=case.steps, mask_policy=preset)


def make_blocks(case: Case, clock: Clock) -> torch.nn.ModuleList:
    blocks, _, _ = MODELS[case.model]
    script = Script(blocks, case.steps, seed=blocks)
    kind = DualBlock if case.dual else SingleBlock
    module = torch.nn.ModuleList(kind(i, script, clock) for i in range(blocks))
    module.script = script
    return module


def run_cache_dit(case: Case) -> Run:
    clock = Clock()
    blocks = make_blocks(case, clock)
    _, fn, bn = MODELS[case.model]
    cache_config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=fn,
        Bn_compute_blocks=bn,
        residual_diff_threshold=case.threshold,
        max_warmup_steps=case.warmup,
        warmup_interval=case.interval,
        max_cached_steps=case.max_cached,
        max_continuous_cached_steps=case.max_continuous,
        max_accumulated_residual_diff_threshold=case.max_accumulated,
        enable_separate_cfg=case.separate_cfg,
        num_inference_steps=case.steps,
        steps_computation_mask=reference_mask(case),
        steps_computation_policy=case.scm[1],
    )
    calibrator = None
    if case.calibrator is not None:
        name, order, kind = case.calibrator
        calibrator = {
            "taylorseer": lambda: cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order, calibrator_cache_type=kind),
            "foca": lambda: cache_dit.FoCaCalibratorConfig(calibrator_cache_type=kind),
            "dmd": lambda: cache_dit.DMDCalibratorConfig(calibrator_cache_type=kind),
        }[name]()
    manager = CachedContextManager(name="test")
    manager.new_context(name="ctx", cache_config=cache_config, calibrator_config=calibrator)
    wrapper_class = CachedBlocks_Pattern_0_1_2 if case.dual else CachedBlocks_Pattern_3_4_5
    wrapper = wrapper_class(
        blocks,
        transformer=blocks,
        forward_pattern=cache_dit.ForwardPattern.Pattern_0 if case.dual else cache_dit.ForwardPattern.Pattern_3,
        cache_prefix="blocks",
        cache_context="ctx",
        context_manager=manager,
    )
    branches = 2 if case.separate_cfg else 1
    outputs = []
    for step in range(case.steps):
        for branch in range(branches):  # cond first: cache-dit's non-CFG calls are the even ones
            clock.step, clock.branch = step, branch
            hidden, encoder = blocks.script.inputs(step, branch, case)
            with torch.no_grad():
                out = wrapper(hidden, encoder) if case.dual else (wrapper(hidden), None)
            outputs.append(list(out))
    context = manager.get_context("ctx")
    cached = [list(context.cached_steps), list(context.cfg_cached_steps)][:branches]
    diffs = [dict(context.residual_diffs), dict(context.cfg_residual_diffs)][:branches]
    return Run(outputs, cached, [{int(k): v for k, v in d.items()} for d in diffs])


def run_ours(case: Case) -> Run:
    clock = Clock()
    blocks = make_blocks(case, clock)
    config = case.config()
    total, fn, bn = len(blocks), config.Fn_compute_blocks, config.Bn_compute_blocks
    first, middle, last = blocks[:fn], blocks[fn : total - bn], blocks[total - bn :] if bn else []

    def call(group: list[torch.nn.Module], hidden: torch.Tensor, encoder: torch.Tensor | None):
        for block in group:
            hidden, encoder = block(hidden, encoder) if case.dual else (block(hidden), None)
        return hidden, encoder

    states = [DBCacheBranch(config, case.steps) for _ in range(2 if case.separate_cfg else 1)]
    outputs = []
    for step in range(case.steps):
        for branch, state in enumerate(states):
            clock.step, clock.branch = step, branch
            hidden, encoder = blocks.script.inputs(step, branch, case)
            if not case.dual:
                encoder = None
            with torch.no_grad():
                original = hidden
                hidden, encoder = call(first, hidden, encoder)
                fn_residual = hidden - original
                if state.can_cache(step, fn_residual):
                    state.mark_cached(step)
                    hidden, encoder = state.approximate(step, (hidden, encoder))
                else:
                    middle_in = (hidden, encoder)
                    hidden, encoder = call(middle, hidden, encoder)
                    residual = (hidden - middle_in[0], None if encoder is None else encoder - middle_in[1])
                    state.store(step, fn_residual, (hidden, encoder), residual)
                hidden, encoder = call(last, hidden, encoder)
            outputs.append([hidden, encoder])
    return Run(outputs, [s.cached_steps for s in states], [s.residual_diffs for s in states])


# ---------------------------------------------------------------------------------------------
# Conformance


def test_grid_covers_every_axis_value() -> None:
    for name, options in AXES.items():
        seen = {getattr(case, name) for case in CASES}
        assert seen >= set(options), name
    pairs = {(case.scm, case.steps) for case in CASES}
    assert all((scm, n) in pairs for scm in AXES["scm"][1:] for n in (28, 20))
    assert any(case.steps < 8 and case.scm[0] != "none" for case in CASES)
    assert any(case.reshape_at is not None and case.calibrator is not None for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_decides_as_cache_dit(case: Case) -> None:
    theirs, ours = run_cache_dit(case), run_ours(case)
    assert ours.cached_steps == theirs.cached_steps
    assert ours.residual_diffs == theirs.residual_diffs  # the same ops on the same tensors: exact
    assert len(ours.outputs) == len(theirs.outputs)
    for call, (mine, ref) in enumerate(zip(ours.outputs, theirs.outputs, strict=True)):
        for stream, (a, b) in enumerate(zip(mine, ref, strict=True)):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=f"call {call}, stream {stream}")


def test_grid_exercises_caching() -> None:
    """The sample is not vacuous: many runs cache, through every gate's path."""
    runs = [(case, run_ours(case)) for case in CASES[:60]]
    assert sum(bool(run.cached_steps[0]) for _, run in runs) > 20
    assert any(-1.0 in run.residual_diffs[0].values() for _, run in runs)
    assert any(0 < d < 0.05 for _, run in runs for d in run.residual_diffs[0].values())
    assert any(d > 0.5 for _, run in runs for d in run.residual_diffs[0].values())
    for name in ("taylorseer", "foca", "dmd"):  # each calibrator forecasts cached steps in some runs
        with_it = [case for case in CASES if case.calibrator and case.calibrator[0] == name]
        assert sum(len(run_ours(case).cached_steps[0]) >= 5 for case in with_it) >= 3, name
    reshaped = [run_ours(case) for case in CASES if case.reshape_at is not None]
    assert any(-2.0 in run.residual_diffs[0].values() for run in reshaped)


# ---------------------------------------------------------------------------------------------
# Exact boundaries: a probe block adds a scripted value to a zero input, so the Fn residual is
# exactly that value and the diffs are exact binary fractions.


class ProbeBlock(torch.nn.Module):
    def __init__(self, values: list[float], clock: Clock):
        super().__init__()
        self.values, self.clock = values, clock

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.values[self.clock.step]


def probe_runs(
    values: list[float], tokens: list[int] | None = None, **settings: object
) -> tuple[list[int], list[int], dict[int, float]]:
    """cache-dit's cached steps, ours, and cache-dit's diffs, for a Fn=1 Bn=0 probe model."""
    settings = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, **settings}
    clock = Clock()
    blocks = torch.nn.ModuleList([ProbeBlock(values, clock), ProbeBlock([0.5] * len(values), clock)])
    manager = CachedContextManager(name="probe")
    manager.new_context(name="ctx", cache_config=cache_dit.DBCacheConfig(num_inference_steps=len(values), **settings))
    wrapper = CachedBlocks_Pattern_3_4_5(
        blocks,
        transformer=blocks,
        forward_pattern=cache_dit.ForwardPattern.Pattern_3,
        cache_prefix="probe",
        cache_context="ctx",
        context_manager=manager,
    )
    branch = DBCacheBranch(DBCacheConfig(**settings), len(values))
    for step, value in enumerate(values):
        zero = torch.zeros(1, tokens[step] if tokens else 2, 2)
        clock.step = step
        wrapper(zero)
        probe = torch.full_like(zero, value)
        if branch.can_cache(step, probe):
            branch.mark_cached(step)
        else:
            branch.store(step, probe, (probe + 0.5, None), (torch.full_like(zero, 0.5), None))
    context = manager.get_context("ctx")
    diffs = {int(k): v for k, v in context.residual_diffs.items()}
    assert diffs == branch.residual_diffs
    return context.cached_steps, branch.cached_steps, diffs


def test_diff_equal_to_threshold_computes() -> None:
    theirs, ours, diffs = probe_runs([1.0, 0.75, 0.5625], residual_diff_threshold=0.25, max_warmup_steps=1)
    assert ours == theirs == [] and diffs == {1: 0.25, 2: 0.25}


def test_accumulated_diff_reaching_the_limit_stops_caching() -> None:
    theirs, ours, diffs = probe_runs(
        [1.0, 0.75, 0.75, 0.75, 0.75, 0.75],
        residual_diff_threshold=0.3,
        max_warmup_steps=1,
        max_continuous_cached_steps=-1,
        max_accumulated_residual_diff_threshold=0.5,
    )
    assert ours == theirs == [1, 2] and diffs == {1: 0.25, 2: 0.25}


def test_shape_change_records_minus_2_which_is_not_accumulated() -> None:
    theirs, ours, diffs = probe_runs(
        [1.0, 0.75, 0.75, 0.675, 0.675, 0.675],
        tokens=[2, 2, 3, 3, 3, 3],
        residual_diff_threshold=0.3,
        max_warmup_steps=1,
        max_continuous_cached_steps=-1,
        max_accumulated_residual_diff_threshold=0.3,
    )
    assert ours == theirs == [1, 3] and diffs == pytest.approx({1: 0.25, 2: -2.0, 3: 0.1})


def test_shape_change_computes_even_with_threshold_1() -> None:
    """Our one deliberate difference: cache-dit would cache, then fail on the residual's shape."""
    branch = DBCacheBranch(DBCacheConfig(residual_diff_threshold=1.0, max_warmup_steps=1), 10)
    branch.can_cache(0, torch.ones(1, 2))
    branch.store(0, torch.ones(1, 2), (torch.ones(1, 2), None), (torch.ones(1, 2), None))
    assert branch.can_cache(1, torch.ones(1, 2))
    branch.mark_cached(1)
    assert not branch.can_cache(2, torch.ones(1, 3))
    assert branch.residual_diffs == {1: -1.0, 2: -2.0}


def test_caps_count_exactly() -> None:
    values = [1.0] * 12
    theirs, ours, _ = probe_runs(
        values, residual_diff_threshold=0.1, max_warmup_steps=1, max_cached_steps=4, max_continuous_cached_steps=2
    )
    assert ours == theirs == [1, 2, 4, 5]
    theirs, ours, _ = probe_runs(
        values, residual_diff_threshold=0.1, max_warmup_steps=3, warmup_interval=2, max_continuous_cached_steps=1
    )
    assert ours == theirs == [1, 3, 5, 7, 9, 11]


# ---------------------------------------------------------------------------------------------
# Config, tag, mask


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Fn_compute_blocks", 0, "Fn_compute_blocks must be an integer >= 1"),
        ("Bn_compute_blocks", -1, "Bn_compute_blocks must be an integer >= 0"),
        ("residual_diff_threshold", -0.1, "residual_diff_threshold must be a finite number >= 0"),
        ("residual_diff_threshold", float("nan"), "residual_diff_threshold must be a finite number >= 0"),
        ("max_warmup_steps", -1, "max_warmup_steps must be an integer >= 0"),
        ("warmup_interval", 0, "warmup_interval must be an integer >= 1"),
        ("max_cached_steps", -2, "max_cached_steps must be an integer >= -1"),
        ("max_continuous_cached_steps", 1.5, "max_continuous_cached_steps must be an integer >= -1"),
        ("max_accumulated_residual_diff_threshold", 0.0, "must be None (no limit) or a finite number > 0"),
        ("calibrator", True, "calibrator must be one of 'none', 'taylorseer', 'foca', 'dmd'"),
        ("taylorseer_order", 5, "taylorseer_order must be an integer in [1, 4]"),
        ("taylorseer_order", 0, "taylorseer_order must be an integer in [1, 4]"),
        ("calibrator_cache_type", "hidden", "calibrator_cache_type must be one of 'residual', 'hidden_states'"),
        ("dmd_history", 1, "dmd_history must be an integer in [2, 32]"),
        ("dmd_rank", -1, "dmd_rank must be an integer in [0, 32]"),
        ("dmd_svd_precision", "fast", "dmd_svd_precision must be one of 'low', 'medium', 'high'"),
        ("scm_preset", "turbo", "scm_preset must be one of 'none', 'slow', 'medium', 'fast', 'ultra', 'custom'"),
        ("scm_policy", "auto", "scm_policy must be one of 'dynamic', 'static'"),
        ("scm_compute_bins", (4, 2), "scm_compute_bins is only used with scm_preset='custom'"),
    ],
)
def test_config_validation_names_field_and_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        DBCacheConfig(**{field: value})


@pytest.mark.parametrize(
    ("compute", "cache"), [((), (1, 2)), ((4, 2), ()), ((4, 0), (1,)), ((4, True), (1,)), ([4, 2], (1,))]
)
def test_custom_scm_needs_both_bin_lists_of_positive_ints(compute: object, cache: object) -> None:
    with pytest.raises(ValueError, match="must be a non-empty tuple of integers >= 1 when scm_preset='custom'"):
        DBCacheConfig(scm_preset="custom", scm_compute_bins=compute, scm_cache_bins=cache)


def test_defaults_are_sglangs() -> None:
    config = DBCacheConfig()
    assert (config.Fn_compute_blocks, config.Bn_compute_blocks, config.max_warmup_steps) == (1, 0, 4)
    assert (config.residual_diff_threshold, config.max_continuous_cached_steps) == (0.24, 3)
    assert config.calibrator == "none" and config.taylorseer_order == 1 and config.scm_preset == "none"


def test_tag() -> None:
    assert DBCacheConfig().tag() == "DBCache_F1B0_W4I1M0MC3_R0.24"
    assert DBCacheConfig(calibrator="foca").tag() == "DBCache_F1B0_W4I1M0MC3_R0.24_FoCa"
    assert DBCacheConfig(calibrator="dmd", dmd_history=8).tag() == "DBCache_F1B0_W4I1M0MC3_R0.24_DMDH8"
    config = DBCacheConfig(
        Fn_compute_blocks=8,
        max_warmup_steps=8,
        max_cached_steps=10,
        max_continuous_cached_steps=-1,
        residual_diff_threshold=0.08,
        calibrator="taylorseer",
        taylorseer_order=2,
        scm_preset="fast",
        scm_policy="static",
    )
    assert config.tag() == "DBCache_F8B0_W8I1M10MC0_R0.08_SCMfast_static_T1O2"


@pytest.mark.parametrize(
    "config",
    [
        DBCacheConfig(),
        DBCacheConfig(
            Fn_compute_blocks=3,
            Bn_compute_blocks=2,
            max_warmup_steps=0,
            warmup_interval=2,
            max_cached_steps=7,
            residual_diff_threshold=1.0,
        ),
    ],
)
def test_tag_matches_cache_dits_strify(config: DBCacheConfig) -> None:
    theirs = cache_dit.DBCacheConfig(
        **{f.name: getattr(config, f.name) for f in fields(cache_dit.DBCacheConfig) if hasattr(config, f.name)}
    )
    assert config.tag() == theirs.strify()


@pytest.mark.parametrize("preset", ["slow", "medium", "fast", "ultra"])
def test_steps_mask_is_cache_dits(preset: str) -> None:
    config = DBCacheConfig(scm_preset=preset)
    for steps in (8, 9, 10, 12, 15, 16, 20, 27, 28, 30, 40, 50):
        assert config.steps_mask(steps) == cache_dit.steps_mask(total_steps=steps, mask_policy=preset), steps
    assert sum(config.steps_mask(28)) == {"slow": 18, "medium": 15, "fast": 11, "ultra": 8}[preset]


def test_custom_steps_mask_is_cache_dits() -> None:
    config = DBCacheConfig(scm_preset="custom", scm_compute_bins=CUSTOM_BINS[0], scm_cache_bins=CUSTOM_BINS[1])
    for steps in (8, 20, 28, 29):
        assert config.steps_mask(steps) == cache_dit.steps_mask(
            list(CUSTOM_BINS[0]), list(CUSTOM_BINS[1]), total_steps=steps
        )
    with pytest.raises(ValueError, match="cover 29 steps but the run has 30"):
        config.steps_mask(30)


def test_steps_mask_off_without_preset_and_below_8_steps() -> None:
    assert DBCacheConfig().steps_mask(28) is None
    for steps in range(1, 8):
        assert DBCacheConfig(scm_preset="fast").steps_mask(steps) is None
    # What we step around: cache-dit has masks for 4 and 6 steps only and fails otherwise.
    assert cache_dit.steps_mask(total_steps=6, mask_policy="fast") == [1, 1, 1, 0, 0, 1]
    with pytest.raises(AssertionError):
        cache_dit.steps_mask(total_steps=5, mask_policy="fast")


def test_imports_without_cache_dit_and_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cache_dit", None)
    path = Path(__file__).resolve().parents[2] / "caching" / "dbcache.py"
    spec = importlib.util.spec_from_file_location("dbcache_without_cache_dit", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "dit_cache.caching"  # its relative imports (caching.offload) resolve in the pack
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    config = module.DBCacheConfig(scm_preset="medium")
    assert module.DBCacheBranch(module.DBCacheConfig(), 28).mask is None  # no mask, no cache-dit needed
    with pytest.raises(ImportError, match="pip install cache-dit"):
        config.steps_mask(28)
    calibrated = module.DBCacheConfig(calibrator="foca")  # validates without cache-dit; a run needs it
    with pytest.raises(ImportError, match="The calibrator comes from cache-dit.*set calibrator to 'none'"):
        module.DBCacheBranch(calibrated, 28)
    assert issubclass(CacheDitNotInstalledError, ImportError)


# ---------------------------------------------------------------------------------------------
# Beyond cache-dit: several calls in one sampler step (Heun, DPM++ 2S)


def test_two_calls_in_one_step_count_once() -> None:
    config = DBCacheConfig(max_warmup_steps=1, residual_diff_threshold=0.5, max_continuous_cached_steps=1)
    branch = DBCacheBranch(config, 10)
    probe = torch.ones(2, 3)
    assert not branch.can_cache(0, probe)
    branch.store(0, probe, (torch.zeros(2, 3), None), (torch.ones(2, 3), None))
    for _ in range(2):  # both calls of step 1 may cache: the streak counts earlier steps only
        assert branch.can_cache(1, probe * 1.1)
        branch.mark_cached(1)
    assert branch.cached_steps == [1]
    assert not branch.can_cache(2, probe * 1.2)  # one cached step in a row already: no diff taken
    assert branch.residual_diffs == pytest.approx({1: 0.1})  # the second call's diff is not added
    assert branch.accumulated_residual_diff == pytest.approx(0.1)

    capped = DBCacheBranch(replace(config, max_cached_steps=1), 10)
    capped.store(0, probe, (torch.zeros(2, 3), None), (torch.ones(2, 3), None))
    for _ in range(2):  # the cap counts earlier steps only, too
        assert capped.can_cache(1, probe)
        capped.mark_cached(1)
    assert not capped.can_cache(3, probe)


def test_steps_cannot_go_back() -> None:
    branch = DBCacheBranch(DBCacheConfig(), 10)
    branch.can_cache(3, torch.ones(1))
    with pytest.raises(ValueError, match="step must not go back"):
        branch.can_cache(2, torch.ones(1))


def test_calibrators_count_every_call_as_cache_dit_counts_transformer_calls() -> None:
    """Several calls in one sampler step (Heun, DPM++ 2S): each advances the branch's calibrators once, as
    cache-dit's context advances them per transformer call; none divides by a zero step."""
    from cache_dit.caching.cache_contexts.calibrators import TaylorSeerCalibrator

    config = DBCacheConfig(calibrator="taylorseer", max_warmup_steps=0, residual_diff_threshold=1.0)
    branch, reference = DBCacheBranch(config, 10), TaylorSeerCalibrator(n_derivatives=1)
    probe, zero = torch.ones(1, 2), torch.zeros(1, 2)
    calls = [(0, True), (0, True), (1, True), (1, True), (2, True), (2, False), (3, False)]  # (step, computes)
    for call, (step, computes) in enumerate(calls):
        cached = branch.can_cache(step, probe)  # threshold 1: caches whenever a probe is stored
        reference.mark_step_begin()
        if computes:
            value = torch.full((1, 2), float(call * call))
            branch.store(step, probe, (value, None), (value, None))
            reference.update(value)
        else:
            assert cached
            branch.mark_cached(step)
            (ours, _), theirs = branch.approximate(step, (zero, None)), reference.approximate()
            assert torch.equal(ours, theirs) and torch.isfinite(ours).all(), (call, ours, theirs)


def test_config_is_frozen_and_revalidated_on_replace() -> None:
    config = DBCacheConfig()
    with pytest.raises(FrozenInstanceError):
        config.warmup_interval = 2
    with pytest.raises(ValueError, match="warmup_interval"):
        replace(config, warmup_interval=0)
