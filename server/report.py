"""How a plan is shown: the `gemma-serve plan` table, its JSON, and the start-up log block."""

from __future__ import annotations

from typing import Any

from server.capability import capability_text
from server.hardware import Device, Hardware
from server.memory import GiB, gib
from server.planner import Plan, PlanOptions
from server.settings import Settings


def plan_options(settings: Settings) -> PlanOptions:
    return PlanOptions(
        model=settings.model,
        ctx=settings.ctx,
        plan_ctx=settings.plan_ctx,
        max_ctx=settings.max_ctx,
        gpu_layers=settings.gpu_layers,
        margin=settings.gpu_margin,
        kv_type=settings.kv_cache_type,
        parallel=settings.parallel,
        cuda_architectures=settings.cuda_architectures,
        vision=not settings.no_vision,
    )


def _at_once(plan: Plan) -> str:
    if not plan.parallel_trials:
        return str(plan.parallel)
    return f"{plan.parallel} to {max(plan.parallel_trials)} (measured as the model loads)"


def _where(plan: Plan) -> str:
    if not plan.on_gpu:
        return "on the CPU"
    if plan.n_gpu_layers == -1:
        return (
            "all layers on the GPU"
            if plan.tensor_split is None
            else (
                "all layers split over the GPUs " + "/".join(f"{s:.0%}" for s in plan.tensor_split)
            )
        )
    blocks = plan.model.architecture.block_count
    if plan.n_gpu_layers >= blocks:
        return f"all {blocks} layers on the GPU, the output layer on the CPU"
    return f"{plan.n_gpu_layers} of {blocks} layers on the GPU"


def device_line(index: int, device: Device) -> str:
    capability = (
        f", compute capability {capability_text(device.compute_capability)}"
        if device.compute_capability is not None
        else ""
    )
    return (
        f"  {index}: {device.name}: {gib(device.total)} total, {gib(device.free)} free{capability}"
    )


def describe(hardware: Hardware, plan: Plan) -> list[str]:
    """Devices, every model with the memory it needs, the pick and why."""
    lines = []
    if hardware.devices:
        versions = f" (driver {hardware.driver}, CUDA {hardware.cuda})" if hardware.driver else ""
        lines.append(f"GPUs{versions}:")
        lines += [device_line(i, d) for i, d in enumerate(hardware.devices)]
    else:
        lines.append(f"GPUs: none ({hardware.note or 'none found'})")
    lines.append(f"  {'model':<22} {'context':>8} {'needed':>10} {'available':>10}  fits")
    for row in plan.candidates:
        mark = "  <- pick" if row.model_id == plan.model.id else ""
        fits = ("yes" if row.fits else "no") if plan.gpus else "-"
        available = gib(plan.available) if plan.gpus else "-"
        lines.append(
            f"  {row.model_id:<22} {row.n_ctx:>8} {gib(row.needed):>10} "
            f"{available:>10}  {fits}{mark}"
        )
    lines.append(
        f"pick: {plan.model.id}, {plan.n_ctx} tokens of context, {_where(plan)}, "
        f"{_at_once(plan)} requests at once"
    )
    lines.append(f"why: {plan.reason}")
    if plan.vision:
        lines.append(
            f"vision: {plan.model.id} sees images; its projector and compute buffer take "
            f"{gib(plan.vision)} of the {gib(plan.needed)} (--no-vision gives it to the context)"
        )
    lines += [f"warning: {warning}" for warning in plan.refusals + plan.warnings]
    return lines


def no_gpu_line(hardware: Hardware, plan: Plan) -> str:
    """One line: why this plan does not run on a GPU, and what to do (for --require-gpu)."""
    if hardware.failing:
        return f"{hardware.failing} (or set GEMMA_SERVE_REQUIRE_GPU=0 to serve on the CPU)"
    if not hardware.devices:
        return (
            f"no NVIDIA GPU found ({hardware.note or 'none found'}); check that nvidia-smi "
            "works here (in a container: start it with the GPUs, e.g. docker run --gpus all), "
            "or set GEMMA_SERVE_REQUIRE_GPU=0 to serve on the CPU"
        )
    if plan.refusals:
        return "; ".join(plan.refusals)
    return f"{plan.reason}; set GEMMA_SERVE_REQUIRE_GPU=0 to serve on the CPU"


def as_json(hardware: Hardware, plan: Plan) -> dict[str, Any]:
    return {
        "devices": [
            {
                "name": d.name,
                "total_bytes": d.total,
                "free_bytes": d.free,
                "compute_capability": (
                    capability_text(d.compute_capability) if d.compute_capability else None
                ),
            }
            for d in hardware.devices
        ],
        "driver": hardware.driver,
        "cuda": hardware.cuda,
        "available_bytes": plan.available,
        "candidates": [
            {
                "model": r.model_id,
                "ctx": r.n_ctx,
                "needed_bytes": r.needed,
                "needed_gib": round(r.needed / GiB, 2),
                "fits": r.fits,
            }
            for r in plan.candidates
        ],
        "pick": {
            "model": plan.model.id,
            "ctx": plan.n_ctx,
            "parallel": plan.parallel,
            "parallel_trials": list(plan.parallel_trials),
            "n_gpu_layers": plan.n_gpu_layers,
            "tensor_split": list(plan.tensor_split) if plan.tensor_split else None,
            "needed_bytes": plan.needed,
            "vision_bytes": plan.vision,
        },
        "reason": plan.reason,
        "warnings": list(plan.refusals + plan.warnings),
    }
