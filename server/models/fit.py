"""Whether a model fits beside those loaded, and which idle ones to unload first: pure.

The figures are read at load time (NVML's free GPU memory, or the system's available memory on
the CPU), so a game started since the last load is counted. A loaded model still serving a
request is never unloaded for another; idle ones go least recently used first, and only as many
as the new model needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.memory import gib


@dataclass(frozen=True)
class Resident:
    """A loaded model as the decision sees it."""

    model_id: str
    holds: int  # bytes of the memory the decision is about
    busy: bool  # serving or about to serve a request: never unloaded for another model
    last_used: float  # monotonic seconds; the smallest is the least recently used


@dataclass(frozen=True)
class Placement:
    """Load after unloading `evict` (in that order); `free` is then expected to be free."""

    evict: tuple[str, ...]
    free: int | None


class CannotFit(Exception):
    """The model cannot fit even with every idle model unloaded. The message has the figures
    and what to do; the API answers 400 naming `model`."""

    def __init__(self, model_id: str, need: int, free: int, busy: Sequence[Resident], what: str):
        held = sum(resident.holds for resident in busy)
        in_use = (
            f"; {gib(held)} more is held by loaded models serving requests now "
            f"({', '.join(resident.model_id for resident in busy)})"
            if busy
            else ""
        )
        super().__init__(
            f"{model_id} needs {gib(need)} of {what} but only {gib(free)} can be had for it "
            f"(free now, plus what idle models would give back){in_use}. "
            "Serve a smaller model, lower --ctx, or close the program holding the memory."
        )
        self.model_id = model_id
        self.need = need
        self.free = free


def place(
    model_id: str,
    need: int,
    free: int | None,
    residents: Sequence[Resident],
    *,
    what: str = "GPU memory",
) -> Placement:
    """Where `model_id` (needing `need` bytes) goes when `free` bytes are free now beside
    `residents`. `free` None: nothing measured, so it is loaded beside the others. Raises
    CannotFit when even unloading every idle resident leaves too little."""
    if free is None or need <= free:
        return Placement((), free)
    idle = sorted((r for r in residents if not r.busy), key=lambda r: r.last_used)
    evict: list[str] = []
    after = free
    for resident in idle:
        if need <= after:
            break
        evict.append(resident.model_id)
        after += resident.holds
    if need > after:
        raise CannotFit(model_id, need, after, [r for r in residents if r.busy], what)
    return Placement(tuple(evict), after)
