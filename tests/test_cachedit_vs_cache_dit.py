"""Our Apply Cache-DiT in ComfyUI decides and computes exactly as cache-dit itself, on the same weights.

For each family (Flux, Wan 2.1 T2V), one tiny model, two implementations of it:
- diffusers' transformer (``FluxTransformer2DModel`` / ``WanTransformer3DModel``) with
  deterministic weights, accelerated by cache-dit's own ``cache_dit.enable_cache`` (transformer
  only; Flux's double and single blocks form one block list, as with cache-dit's default
  ``CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS=1`` and as in our pack), driven by a plain Euler flow loop
  written here;
- ComfyUI's model (``comfy.supported_models.Flux`` / ``WAN21_T2V``) loaded strictly with the same
  weights, patched by our node and sampled by ComfyUI's own sampler (``comfy.sample.sample``,
  euler / simple, cfg 1). Flux weights are converted by ComfyUI's own
  ``comfy.model_detection.convert_diffusers_mmdit``; ComfyUI has no diffusers key map for Wan, so
  ``wan_diffusers_to_comfy`` below renames Wan's keys (one to one, no tensor is changed).

Both sides see the same noise, text, pooled vector, guidance and sigmas. Every case asserts the
same cached steps, the same residual diff at every measured step, the same model output at every
step and the same final latent; and that caching changed the result, so agreement is not vacuous.

Tolerances. The two implementations differ only by float32 rounding (other kernels: ComfyUI's
attention vs torch SDPA, fused vs separate q/k/v, rope and sinusoids in other precisions).
Observed over every case: model outputs within 1e-6 of their magnitude uncached and within 5e-6
with caching (TaylorSeer's extrapolation scales the differences up), final latents within 8e-6
(abs, on latents of magnitude ~15), residual diffs within 1.2e-5 relative. ``OUTPUT_TOL`` (2e-5
of the magnitude) leaves >= 4x margin; caching moves the final latent by 2.5e-3 to 5e-2 of its
magnitude (asserted > 50 x ``OUTPUT_TOL`` per case), so a step decided or approximated
differently cannot pass. ``DIFF_RTOL`` is 1e-4. Every measured diff must also sit clearly away
from the threshold (``THRESHOLD_MARGIN``; the closest is 0.5% away, 400x the diffs' agreement),
so the decisions do not hinge on rounding. DMD's cases allow ten times ``OUTPUT_TOL`` (see ``CASES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import comfy.model_detection
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.supported_models
import pytest
import tiny_models as tm
import torch
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from runs import last_run

cache_dit = pytest.importorskip("cache_dit")
diffusers = pytest.importorskip("diffusers")
from cache_dit import DBCacheConfig as CacheDitConfig
from cache_dit import DMDCalibratorConfig, FoCaCalibratorConfig, TaylorSeerCalibratorConfig
from cache_dit.envs import ENV as CACHE_DIT_ENV

OUTPUT_TOL = 2e-5  # of the tensor's max magnitude; see the module docstring
DIFF_RTOL = 1e-4
THRESHOLD_MARGIN = 2e-3  # a measured diff must differ from the threshold by this much (relative)
TEXT_TOKENS, CONTEXT_DIM = 8, 4096  # T5-XXL / UMT5-XXL width
SMOOTH_TIME_FREQUENCY = 2.0  # see smooth_time_embedding


@torch.no_grad()
def smooth_time_embedding(linear_1: torch.nn.Linear) -> None:
    """Keep only the slow sinusoids of a 256-wide timestep embedding (frequency <= 2 per unit sigma).

    Flux and Wan embed 1000 * sigma with sinusoids of frequencies 1000 * 10000^(-i/128) and feed
    them to a linear layer. Random weights on the fast ones make the modulation jump from step to
    step (Flux: Fn residual diffs of 0.5-0.8 at 12 steps), where a trained model's is smooth;
    they also amplify float32 rounding of sin(1000 * sigma * f) (ComfyUI computes Wan's sinusoids
    in float64, diffusers in float32). Zeroing the input columns of the fast ones (the cos and the
    sin half) gives diffs of ~0.005-0.2 that grow along the run, so thresholds between them make
    both cache and compute steps. Same weights on both sides: no effect on the comparison itself.
    """
    half = linear_1.weight.shape[1] // 2
    frequencies = 1000.0 * torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    linear_1.weight.mul_((frequencies <= SMOOTH_TIME_FREQUENCY).float().repeat(2))


@dataclass(frozen=True)
class Inputs:
    noise: torch.Tensor
    context: torch.Tensor
    pooled: torch.Tensor | None = None


def _cpu_patcher(model: Any) -> comfy.model_patcher.ModelPatcher:
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def _comfy_model(config_class: type, unet_config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Any:
    model_config = config_class(tm.host_unet_config(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "")
    model.diffusion_model.load_state_dict(state_dict, strict=True)
    return _cpu_patcher(model)


class FluxPair:
    """Flux dev: 2 double + 4 single blocks, hidden 128 in 2 heads of 64 (rope 8 + 28 + 28),
    16 latent channels in 2x2 patches (64 image tokens at 16x16), 8 text tokens, pooled CLIP-L 768,
    guidance embedding (ComfyUI's default guidance 3.5 for Flux conds)."""

    name = "flux"
    double, single, hidden, heads, pooled_dim, side, guidance = 2, 4, 128, 2, 768, 16, 3.5

    def diffusers_kwargs(self) -> dict[str, Any]:
        return {
            "patch_size": 1, "in_channels": 64, "num_layers": self.double, "num_single_layers": self.single,
            "attention_head_dim": self.hidden // self.heads, "num_attention_heads": self.heads,
            "joint_attention_dim": CONTEXT_DIM, "pooled_projection_dim": self.pooled_dim, "guidance_embeds": True,
            "axes_dims_rope": (8, 28, 28),
        }

    def diffusers_model(self, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        from diffusers import FluxTransformer2DModel

        transformer = FluxTransformer2DModel(**self.diffusers_kwargs()).eval()
        if state_dict is not None:
            transformer.load_state_dict(state_dict, strict=True)
        return transformer

    def time_linear(self, transformer: torch.nn.Module) -> torch.nn.Linear:
        return transformer.time_text_embed.timestep_embedder.linear_1

    def comfy_model(self, state_dict: dict[str, torch.Tensor]) -> comfy.model_patcher.ModelPatcher:
        # convert_diffusers_mmdit writes converted values into its input tensors in place (the final
        # layer's scale/shift swap): give it copies, or the diffusers weights change under us.
        converted = comfy.model_detection.convert_diffusers_mmdit({k: v.clone() for k, v in state_dict.items()}, "")
        config = tm._flux_config(guidance_embed=True)
        config.update(depth=self.double, depth_single_blocks=self.single, hidden_size=self.hidden,
                      num_heads=self.heads, context_in_dim=CONTEXT_DIM, vec_in_dim=self.pooled_dim)
        return _comfy_model(comfy.supported_models.Flux, config, converted)

    def inputs(self) -> Inputs:
        g = tm._generator("cachedit-vs-cache-dit", self.name)
        return Inputs(
            noise=torch.randn(1, 16, self.side, self.side, generator=g),
            context=torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=g),
            pooled=torch.randn(1, self.pooled_dim, generator=g),
        )

    def conds(self, inputs: Inputs) -> tuple[list, list]:
        positive = [[inputs.context, {"pooled_output": inputs.pooled}]]
        negative = [[torch.zeros_like(inputs.context), {"pooled_output": torch.zeros_like(inputs.pooled)}]]
        return positive, negative

    def predict(
        self, transformer: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, inputs: Inputs
    ) -> torch.Tensor:
        """v at sigma: latents in 2x2 patches as tokens, ids (0, row, column), text ids 0, timestep = sigma."""
        b, c, h, w = x.shape
        tokens = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3)
        img_ids[..., 1] = torch.arange(h // 2, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(w // 2, dtype=torch.float32)[None, :]
        out = transformer(hidden_states=tokens, encoder_hidden_states=inputs.context,
                          pooled_projections=inputs.pooled, timestep=sigma.reshape(1),
                          img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(inputs.context.shape[1], 3),
                          guidance=torch.tensor([self.guidance]), return_dict=False)[0]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# diffusers WanTransformer3DModel -> ComfyUI WanModel key names (ComfyUI 0.3.75 has no such map).
_WAN_TOP = {
    "scale_shift_table": "head.modulation", "proj_out": "head.head",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
}
_WAN_BLOCK = {
    "scale_shift_table": "modulation", "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k", "norm2": "norm3",  # diffusers' norm2 is the cross-attention norm
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def _rename(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def wan_diffusers_to_comfy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{index}.{_rename(rest, _WAN_BLOCK)}"
        else:
            key = _rename(key, _WAN_TOP)
        out[key] = value.clone()
    return out


class WanPair:
    """Wan 2.1 T2V: 4 blocks of width 128 in one head (rope 44 + 42 + 42), ffn 256, 16 latent
    channels, 3 latent frames of 8x8 in 1x2x2 patches (48 tokens), 8 text tokens."""

    name = "wan"
    layers, dim, frames, side = 4, 128, 3, 8

    def diffusers_model(self, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        from diffusers import WanTransformer3DModel

        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=self.dim, in_channels=16,
            out_channels=16, text_dim=CONTEXT_DIM, freq_dim=256, ffn_dim=256, num_layers=self.layers,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        ).eval()
        if state_dict is not None:
            transformer.load_state_dict(state_dict, strict=True)
        return transformer

    def time_linear(self, transformer: torch.nn.Module) -> torch.nn.Linear:
        return transformer.condition_embedder.time_embedder.linear_1

    def comfy_model(self, state_dict: dict[str, torch.Tensor]) -> comfy.model_patcher.ModelPatcher:
        config = tm._wan_config("t2v", 16, 16)
        config.update(num_layers=self.layers, dim=self.dim)
        return _comfy_model(comfy.supported_models.WAN21_T2V, config, wan_diffusers_to_comfy(state_dict))

    def inputs(self) -> Inputs:
        g = tm._generator("cachedit-vs-cache-dit", self.name)
        return Inputs(
            noise=torch.randn(1, 16, self.frames, self.side, self.side, generator=g),
            context=torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=g),
        )

    def conds(self, inputs: Inputs) -> tuple[list, list]:
        return [[inputs.context, {}]], [[torch.zeros_like(inputs.context), {}]]

    def predict(
        self, transformer: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, inputs: Inputs
    ) -> torch.Tensor:
        """v at sigma; Wan's timestep is 1000 * sigma (ComfyUI's discrete-flow multiplier)."""
        return transformer(hidden_states=x, timestep=(sigma * 1000.0).reshape(1),
                           encoder_hidden_states=inputs.context, return_dict=False)[0]


PAIRS = {pair.name: pair for pair in (FluxPair(), WanPair())}


@dataclass
class Setup:
    pair: FluxPair | WanPair
    weights: dict[str, torch.Tensor]
    model: comfy.model_patcher.ModelPatcher
    inputs: Inputs


def build_setup(pair: FluxPair | WanPair) -> Setup:
    transformer = pair.diffusers_model()
    # Every tensor filled: linear weights N(0, 1/fan_in) so each block changes its input,
    # modulation tables and gates non-zero, norms 1 (QK norms 2), other tensors N(0, 0.02).
    tm._fill_weights(transformer, f"diffusers-{pair.name}", 0)
    smooth_time_embedding(pair.time_linear(transformer))
    weights = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    return Setup(pair, weights, pair.comfy_model(weights), pair.inputs())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are so small that a second thread only adds overhead, and
    on a busy 2-core machine spinning OpenMP threads make a run 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setups() -> dict[str, Setup]:
    if not CACHE_DIT_ENV.CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS:
        pytest.skip("CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS=0 makes cache-dit cache Flux's two block lists apart")
    return {}


def setup_for(setups: dict[str, Setup], family: str) -> Setup:
    if family not in setups:
        setups[family] = build_setup(PAIRS[family])
    return setups[family]


# ---------------------------------------------------------------------------------------------
# The two samplers


def sigmas_for(model: comfy.model_patcher.ModelPatcher, steps: int) -> torch.Tensor:
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)


def sample_comfy(
    setup: Setup, model: comfy.model_patcher.ModelPatcher, steps: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ComfyUI's KSampler path (euler, simple, cfg 1); returns the latent and every model output."""
    outputs: list[torch.Tensor] = []
    handle = model.model.diffusion_model.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    positive, negative = setup.pair.conds(setup.inputs)
    noise = setup.inputs.noise
    try:
        latent = comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative,
                                     torch.zeros_like(noise), seed=0, disable_pbar=True)
    finally:
        handle.remove()
    return latent, outputs


@torch.no_grad()
def sample_diffusers(
    setup: Setup, transformer: torch.nn.Module, sigmas: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A plain Euler flow loop over `sigmas`, in ComfyUI's arithmetic; returns the latent and every output.

    The model predicts v; denoised = x - sigma * v, d = (x - denoised) / sigma, x += d * (sigma_next
    - sigma). The start is the noise itself, as ComfyUI's noise_scaling gives at sigma 1
    (1 * noise + 0 * latent); the result goes through process_latent_out as ComfyUI's sampler does.
    """
    assert sigmas[0].item() == 1.0
    x = setup.inputs.noise.clone()
    outputs = []
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        v = setup.pair.predict(transformer, x, sigma, setup.inputs)
        outputs.append(v)
        denoised = x - v * sigma
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
    return setup.model.model.process_latent_out(x), outputs


def close(a: torch.Tensor, b: torch.Tensor, tolerance: float = OUTPUT_TOL) -> tuple[bool, float]:
    """Whether a and b agree within `tolerance` of their magnitude; also the max abs difference."""
    error = (a - b).abs().max().item()
    return error <= tolerance * max(b.abs().max().item(), 1.0), error


# ---------------------------------------------------------------------------------------------
# Cases: the node's settings, and the same settings in cache-dit's configs


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    steps: int
    Fn: int
    Bn: int
    threshold: float
    warmup: int = 4
    interval: int = 1
    max_cached: int = -1
    max_continuous: int = -1
    calibrator: tuple[str, int, str] | None = None  # (calibrator, taylorseer_order, calibrator_cache_type)
    tolerance: float = OUTPUT_TOL
    scm: tuple[str, str] = ("none", "dynamic")  # (preset, policy)

    @property
    def id(self) -> str:
        return f"{self.family}-{self.name}"

    def node_inputs(self) -> dict[str, Any]:
        return {
            "Fn_compute_blocks": self.Fn, "Bn_compute_blocks": self.Bn, "residual_diff_threshold": self.threshold,
            "max_warmup_steps": self.warmup, "warmup_interval": self.interval, "max_cached_steps": self.max_cached,
            "max_continuous_cached_steps": self.max_continuous,
            "calibrator": self.calibrator[0] if self.calibrator else "none",
            "taylorseer_order": self.calibrator[1] if self.calibrator else 1,
            "calibrator_cache_type": self.calibrator[2] if self.calibrator else "residual",
            "scm_preset": self.scm[0], "scm_policy": self.scm[1],
        }

    def enable_cache_dit(self, transformer: torch.nn.Module) -> None:
        mask = None
        if self.scm[0] != "none":
            mask = cache_dit.steps_mask(total_steps=self.steps, mask_policy=self.scm[0])
        config = CacheDitConfig(
            Fn_compute_blocks=self.Fn, Bn_compute_blocks=self.Bn, residual_diff_threshold=self.threshold,
            max_warmup_steps=self.warmup, warmup_interval=self.interval, max_cached_steps=self.max_cached,
            max_continuous_cached_steps=self.max_continuous,
            # cfg 1: ComfyUI calls the model once per step, cache-dit must not alternate branches
            enable_separate_cfg=False,
            num_inference_steps=self.steps, steps_computation_mask=mask, steps_computation_policy=self.scm[1],
        )
        calibrator = None
        if self.calibrator is not None:
            name, order, kind = self.calibrator
            calibrator = {
                "taylorseer": lambda: TaylorSeerCalibratorConfig(taylorseer_order=order, calibrator_cache_type=kind),
                "foca": lambda: FoCaCalibratorConfig(calibrator_cache_type=kind),
                "dmd": lambda: DMDCalibratorConfig(calibrator_cache_type=kind),
            }[name]()
        cache_dit.enable_cache(transformer, cache_config=config, calibrator_config=calibrator)


CASES = [
    # SGLang's defaults but R 0.12: caching runs of 3 (the MC3 cap), then runs of 2 and 1.
    Case("flux", "F1B0_R0.12_W4_MC3", 28, Fn=1, Bn=0, threshold=0.12, max_continuous=3),
    # Fn = both double blocks, middle = 3 single blocks, Bn = the last single block.
    Case("flux", "F2B1_R0.24_W4", 28, Fn=2, Bn=1, threshold=0.24),
    # The middle runs from the double blocks into the single ones, with a Bn block after it;
    # warmup steps 0, 2, 4 only, and at most 6 cached steps.
    Case("flux", "F1B1_R0.12_W6I2_M6_MC3", 20, Fn=1, Bn=1, threshold=0.12, warmup=6, interval=2,
         max_cached=6, max_continuous=3),
    Case("flux", "F1B0_R0.12_TaylorSeer1", 28, Fn=1, Bn=0, threshold=0.12, calibrator=("taylorseer", 1, "residual")),
    Case("flux", "F1B0_R0.12_TaylorSeer2", 28, Fn=1, Bn=0, threshold=0.12, calibrator=("taylorseer", 2, "residual")),
    Case("flux", "F1B0_R0.12_FoCa", 28, Fn=1, Bn=0, threshold=0.12, calibrator=("foca", 1, "residual")),
    Case("flux", "F1B0_R0.2_MC5_FoCa_hidden", 28, Fn=1, Bn=0, threshold=0.2, max_continuous=5,
         calibrator=("foca", 1, "hidden_states")),
    # DMD's fit (an SVD of the last 6 computed steps, keeping modes down to 1e-4 of the largest) amplifies the
    # two implementations' float32 rounding differences past OUTPUT_TOL on cached steps; at ten times it, the
    # effect of caching is still asserted to be 50 times larger.
    Case("flux", "F1B0_R0.12_DMD", 28, Fn=1, Bn=0, threshold=0.12, calibrator=("dmd", 1, "residual"),
         tolerance=10 * OUTPUT_TOL),
    Case("flux", "F1B0_R0.2_MC3_TaylorSeer2_hidden", 28, Fn=1, Bn=0, threshold=0.2, max_continuous=3,
         calibrator=("taylorseer", 2, "hidden_states")),
    Case("flux", "F1B0_SCM_medium_static", 28, Fn=1, Bn=0, threshold=0.12, scm=("medium", "static")),
    Case("flux", "F1B0_R0.08_SCM_fast_dynamic", 28, Fn=1, Bn=0, threshold=0.08, scm=("fast", "dynamic")),
    Case("wan", "F1B0_R0.05_W4_MC3", 28, Fn=1, Bn=0, threshold=0.05, max_continuous=3),
    Case("wan", "F2B1_R0.2_W4_MC3", 28, Fn=2, Bn=1, threshold=0.2, max_continuous=3),
    Case("wan", "F1B0_R0.05_MC3_TaylorSeer2", 28, Fn=1, Bn=0, threshold=0.05, max_continuous=3,
         calibrator=("taylorseer", 2, "residual")),
    Case("wan", "F1B0_R0.05_MC3_FoCa", 28, Fn=1, Bn=0, threshold=0.05, max_continuous=3,
         calibrator=("foca", 1, "residual")),
    Case("wan", "F1B0_R0.05_MC3_DMD", 28, Fn=1, Bn=0, threshold=0.05, max_continuous=3,
         calibrator=("dmd", 1, "residual")),
    Case("wan", "F1B0_SCM_medium_static", 28, Fn=1, Bn=0, threshold=0.05, scm=("medium", "static")),
]


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("family", list(PAIRS))
def test_the_same_weights_give_the_same_model(setups, family: str) -> None:
    """Uncached: ComfyUI's model on the converted weights is diffusers' model, call by call and sampled."""
    setup = setup_for(setups, family)
    steps = 6
    sigmas = sigmas_for(setup.model, steps)
    expected, expected_outputs = sample_diffusers(setup, setup.pair.diffusers_model(setup.weights), sigmas)
    latent, outputs = sample_comfy(setup, setup.model, steps)
    assert len(outputs) == len(expected_outputs) == steps
    for step, (ours, theirs) in enumerate(zip(outputs, expected_outputs)):
        ok, error = close(ours, theirs)
        assert ok, f"step {step}: model outputs differ by {error:.3g}"
    ok, error = close(latent, expected)
    assert ok, f"final latents differ by {error:.3g}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_decisions_and_outputs_as_cache_dit(setups, case: Case) -> None:
    setup = setup_for(setups, case.family)
    sigmas = sigmas_for(setup.model, case.steps)

    # cache-dit on the diffusers model
    transformer = setup.pair.diffusers_model(setup.weights)  # fresh: cache-dit's hooks stay on an instance
    case.enable_cache_dit(transformer)
    expected, expected_outputs = sample_diffusers(setup, transformer, sigmas)
    # one entry per cached block list (one here), then possibly the transformer's own
    stats = cache_dit.summary(transformer, logging=False)[0]
    their_cached = list(stats.cached_steps)
    their_diffs = {int(step): diff for step, diff in stats.residual_diffs.items()}

    # our node in ComfyUI
    (patched,) = ApplyCacheDiT.execute(setup.model, **case.node_inputs())
    assert patched is not setup.model
    latent, outputs = sample_comfy(setup, patched, case.steps)
    records = last_run(patched, "cachedit").records
    assert [r.step for r in records] == list(range(case.steps)), "one model call per step, in order"
    our_cached = [r.step for r in records if not r.computed]
    our_diffs = {r.step: r.rel_l1[0] for r in records if r.rel_l1[0] is not None}

    # the case exercises both outcomes, and its decisions are well conditioned
    assert their_cached and len(their_cached) < case.steps - 1, f"cache-dit cached {their_cached}"
    for step, diff in their_diffs.items():
        assert abs(diff - case.threshold) > THRESHOLD_MARGIN * case.threshold, (
            f"step {step}: diff {diff:.6f} too close to the threshold {case.threshold} to compare decisions"
        )

    # the same decisions
    assert our_cached == their_cached, f"cached steps: ours {our_cached}, cache-dit {their_cached}"
    assert our_diffs.keys() == their_diffs.keys(), (
        f"steps with a measured diff: ours {sorted(our_diffs)}, cache-dit {sorted(their_diffs)}"
    )
    for step, diff in their_diffs.items():
        assert our_diffs[step] == pytest.approx(diff, rel=DIFF_RTOL), f"step {step}: residual diff"

    # the same outputs at every step, and the same result
    assert len(outputs) == len(expected_outputs) == case.steps
    for step, (ours, theirs) in enumerate(zip(outputs, expected_outputs)):
        ok, error = close(ours, theirs, case.tolerance)
        assert ok, f"step {step} ({'cached' if step in their_cached else 'computed'}): outputs differ by {error:.3g}"
    ok, error = close(latent, expected, case.tolerance)
    assert ok, f"final latents differ by {error:.3g}"

    # and caching did change the result, by far more than the tolerance
    uncached, _ = sample_comfy(setup, setup.model, case.steps)
    effect = (latent - uncached).abs().max().item()
    assert effect > 50 * case.tolerance * latent.abs().max().item(), f"caching changed the latent by only {effect:.3g}"
