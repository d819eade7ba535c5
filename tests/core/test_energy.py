"""EnergyMeter: CPU seconds (never joules) without a GPU counter; NVML differences with one."""

import sys
import types

from fedllm_core.energy import EnergyMeter


def _burn_cpu() -> int:
    return sum(i * i for i in range(300_000))


def test_cpu_meter_reports_cpu_seconds_and_no_joules():
    meter = EnergyMeter("cpu")
    _burn_cpu()
    reading = meter.read()
    assert (reading.joules, reading.source, reading.cpu_seconds > 0) == (None, "cpu_time", True)


def test_cpu_reading_says_it_is_not_joules():
    assert "not joules" in EnergyMeter("cpu").read().note


def test_cuda_meter_without_pynvml_falls_back_to_cpu_time(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    reading = EnergyMeter("cuda:0").read()
    assert (reading.joules, reading.source) == (None, "cpu_time")


def _fake_nvml(counter_mj: list[int]) -> types.ModuleType:
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda handle: counter_mj.pop(0)  # type: ignore[attr-defined]
    return fake


def test_nvml_meter_reports_counter_difference_in_joules(monkeypatch):
    # probe at start-up, baseline, then the read: 1000 mJ -> 3500 mJ is 2.5 J
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([0, 1000, 3500]))
    reading = EnergyMeter("cuda").read()
    assert (reading.joules, reading.source) == (2.5, "nvml")


def test_nvml_failure_mid_run_reports_no_joules(monkeypatch):
    counter = [0, 1000]  # the third call finds the list empty and raises
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(counter))
    assert EnergyMeter("cuda").read().joules is None


def test_reset_restarts_the_interval():
    meter = EnergyMeter("cpu")
    _burn_cpu()
    before = meter.read().cpu_seconds
    meter.reset()
    assert meter.read().cpu_seconds < before
