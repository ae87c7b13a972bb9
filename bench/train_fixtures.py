"""Train the small Flux and Wan fixtures of ``tests/trained_models.py`` (rectified flow, procedural data).

    .venv/bin/python bench/train_fixtures.py flux flux_deep wan   # writes bench/fixtures/trained-*.safetensors

The committed weights came from this script with its defaults (Flux 1500 steps, Wan 700 steps,
batch 32, one thread: roughly 5 + 10 minutes on an idle 2-core CPU, 19 + 25 on the busy one they
were made on; flux_deep, 4 + 8 blocks, 2000 steps: 30 minutes on that machine while tests ran
beside it, 9.1 MB). Training is seeded, so a rerun follows the same recipe; the result is close to, not
bit-identical with, the committed files on another machine or thread count.

Rectified flow as ComfyUI samples it (``CONST`` model sampling): x_s = (1 - s) x0 + s noise
and the model predicts v = noise - x0 from x_s and its timestep ``model_sampling.timestep(s)``.
Half the noise levels are uniform, half follow the model's own shifted schedule (Flux 1.15,
Wan 8) so that the steps a sampler takes are well covered. One class in ten is dropped to
the empty prompt so that CFG works.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import setup_comfy  # noqa: F401  (ComfyUI on sys.path, CPU)

# isort: split
import comfy.utils
import torch
import trained_models as fx

logger = logging.getLogger("train_fixtures")
GUIDANCE = 3.5  # Flux's embedded guidance: ComfyUI's default when a conditioning gives none
DROP_CLASS = 0.1
STEPS = {"flux": 1500, "flux_deep": 2000, "wan": 700}


def noise_levels(model_sampling: torch.nn.Module, batch: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(batch, generator=generator).clamp(1e-3, 1 - 1e-3)
    shifted = model_sampling.sigma(model_sampling.timestep(u))
    return torch.where(torch.arange(batch) % 2 == 0, u, shifted)


def conditioning_batch(classes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    dropped = torch.rand(classes.shape[0], generator=generator) < DROP_CLASS
    pairs = [fx.class_tokens(None if drop else int(k)) for k, drop in zip(classes, dropped)]
    return torch.stack([t for t, _ in pairs]), torch.stack([p for _, p in pairs])


class OutOfPlaceAdd:
    """ComfyUI's blocks add residuals in place (``img += ...``), which autograd refuses when the tensor was
    saved for backward; inside this context ``a += b`` rebinds ``a`` to ``a + b`` instead (same values)."""

    def __enter__(self) -> None:
        self.saved = torch.Tensor.__iadd__
        torch.Tensor.__iadd__ = lambda self, other: self + other

    def __exit__(self, *exc: object) -> None:
        torch.Tensor.__iadd__ = self.saved


@torch.no_grad()
def initialise(model: torch.nn.Module) -> None:
    """Fill the weights ComfyUI leaves uninitialised: matrices normal with std 1/sqrt(fan_in), norms one,
    biases zero, other parameters (Wan's modulation tables) normal with std 0.02; the output layer starts at zero."""
    for module in model.modules():
        is_norm = "Norm" in type(module).__name__
        for param_name, param in module.named_parameters(recurse=False):
            if is_norm:
                param.fill_(1.0 if param_name == "weight" else 0.0)
            elif param_name == "bias":
                param.zero_()
            elif param_name == "weight" and param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5)
            else:
                param.normal_(0.0, 0.02)
    output = model.final_layer.linear if hasattr(model, "final_layer") else model.head.head
    output.weight.zero_()


def train(name: str, steps: int, batch: int, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    base = fx.build(name)
    model, model_sampling = base.diffusion_model, base.model_sampling
    initialise(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / steps)))
    )
    start, running = time.monotonic(), None
    for step in range(steps):
        classes = torch.randint(fx.CLASSES, (batch,), generator=generator)
        x0 = fx.sample_data(name, classes, generator)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = noise_levels(model_sampling, batch, generator)
        s = sigma.view(-1, *[1] * (x0.ndim - 1))
        x = (1 - s) * x0 + s * noise
        tokens, pooled = conditioning_batch(classes, generator)
        kwargs = {"y": pooled, "guidance": torch.full((batch,), GUIDANCE)} if fx.is_flux(name) else {}
        with OutOfPlaceAdd():
            v = model(x, model_sampling.timestep(sigma), tokens, **kwargs)
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            logger.info("%s step %d/%d loss %.4f (%.0f s)", name, step, steps, running, time.monotonic() - start)
    path = fx.weights_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    comfy.utils.save_torch_file(state, str(path))
    logger.info("wrote %s (%.1f MB) after %.0f s", path, path.stat().st_size / 1e6, time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="+", choices=fx.FIXTURES)
    parser.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {STEPS})")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", force=True)
    torch.set_num_threads(args.threads)
    for name in args.fixtures:
        train(name, STEPS[name] if args.steps is None else args.steps, args.batch, args.lr, args.seed)


if __name__ == "__main__":
    main()
