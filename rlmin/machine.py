"""What machine a measurement ran on: benchmarks print it and write it into their JSON."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, logical CPU count, GPU name (if CUDA is available), torch and Python versions."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version(),
            "host": platform.node()}


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    dev = f"GPU {info['gpu']}" if info.get("gpu") else "no GPU"
    return (f"machine: {info['cpu']} ({info['logical_cpus']} logical CPUs), {dev} | "
            f"torch {info['torch']} | Python {info['python']}")


def device_name(device) -> str:
    """The GPU's name for a CUDA device, else the CPU model with its logical core count."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()} ({os.cpu_count()} logical cores)"
