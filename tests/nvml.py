"""A stand-in for the `pynvml` module, reporting real cards' figures (as nvidia-smi shows them on
those cards), for testing what the GPU probe does when NVML answers, on a machine without a GPU."""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20


class NVMLError(Exception):
    """pynvml's base error class (its subclasses name the NVML return code)."""


@dataclass
class Card:
    name: str
    total: int
    used: int
    capability: tuple[int, int]
    uuid: str

    @property
    def free(self) -> int:
        return self.total - self.used


RTX_3090 = Card("NVIDIA GeForce RTX 3090", 24576 * MiB, 345 * MiB, (8, 6), "GPU-5a1f3c5e-3090")
RTX_4060_LAPTOP = Card(
    "NVIDIA GeForce RTX 4060 Laptop GPU", 8188 * MiB, 325 * MiB, (8, 9), "GPU-7b2e4d6f-4060"
)
GTX_1080 = Card("NVIDIA GeForce GTX 1080", 8192 * MiB, 190 * MiB, (6, 1), "GPU-0c9d8e7f-1080")


@dataclass
class Memory:
    total: int
    free: int
    used: int


@dataclass
class FakeNvml:
    """The pynvml functions gemma-serve calls, over `cards`. `init_error` makes nvmlInit fail as
    it does without a driver; `read_error` makes reading the devices fail."""

    cards: list[Card] = field(default_factory=list)
    driver: str = "550.54.14"
    cuda: int = 12040  # CUDA 12.4, as nvmlSystemGetCudaDriverVersion encodes it
    init_error: str | None = None
    read_error: str | None = None
    inits: int = 0
    shutdowns: int = 0
    NVMLError: type[Exception] = NVMLError

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        if self.read_error:
            raise NVMLError(self.read_error)
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Card:
        return self.cards[index]

    def nvmlDeviceGetName(self, card: Card) -> str:
        return card.name

    def nvmlDeviceGetMemoryInfo(self, card: Card) -> Memory:
        return Memory(card.total, card.free, card.used)

    def nvmlDeviceGetCudaComputeCapability(self, card: Card) -> tuple[int, int]:
        return card.capability

    def nvmlDeviceGetUUID(self, card: Card) -> str:
        return card.uuid
