"""Energy accounting: GPU joules where the hardware counts them, CPU seconds elsewhere.

Rules: never invent a figure. On an NVIDIA GPU whose driver exposes the cumulative energy
counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since driver load, Volta and
newer), joules are the counter's difference since the meter started; that is the whole board's
energy, including other processes on the same GPU. Everywhere else ``joules`` is None and the
reading carries this process's CPU seconds (user + system, all threads), which are not joules.
No import of torch here: the experiment runner reads meters without loading a model. A missing
pynvml, driver or counter degrades to CPU time, never to an exception.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

CPU_NOTE = "CPU time of this process (user+system, all threads) in seconds; not joules"
NVML_NOTE = "NVML board energy counter difference (whole GPU, all processes on it)"


@dataclass(frozen=True)
class EnergyReading:
    joules: float | None  # None unless a hardware energy counter was read
    cpu_seconds: float  # process CPU time over the same interval (always measured)
    wall_s: float
    source: str  # "nvml" or "cpu_time"
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nvml_handle(gpu_index: int) -> Any | None:
    """An NVML device handle whose energy counter works, or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises if unsupported
        return handle
    except Exception:  # no library, no driver, no GPU, or counter not supported
        return None


def _gpu_index(device: Any) -> int | None:
    """GPU index from "cuda", "cuda:1", a torch.device or an int; None for CPU devices."""
    if device is None:
        return None
    if isinstance(device, int):
        return device
    text = str(device)
    if not text.startswith("cuda"):
        return None
    _, _, index = text.partition(":")
    return int(index) if index else 0


class EnergyMeter:
    """Measures from construction (or ``reset``) to each ``read``.

    ``device``: where the work runs ("cpu", "cuda", "cuda:0", a torch.device, an int GPU index).
    """

    def __init__(self, device: Any = "cpu") -> None:
        index = _gpu_index(device)
        self._handle = _nvml_handle(index) if index is not None else None
        self.source = "nvml" if self._handle is not None else "cpu_time"
        self.reset()

    def _energy_mj(self) -> int | None:
        if self._handle is None:
            return None
        try:
            import pynvml

            return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # the driver went away mid-run: report no joules, not a guess
            return None

    def reset(self) -> None:
        self._cpu0 = time.process_time()
        self._wall0 = time.monotonic()
        self._mj0 = self._energy_mj()

    def read(self) -> EnergyReading:
        cpu = time.process_time() - self._cpu0
        wall = time.monotonic() - self._wall0
        mj = self._energy_mj()
        if mj is not None and self._mj0 is not None:
            return EnergyReading((mj - self._mj0) / 1000.0, cpu, wall, "nvml", NVML_NOTE)
        return EnergyReading(None, cpu, wall, "cpu_time", CPU_NOTE)
