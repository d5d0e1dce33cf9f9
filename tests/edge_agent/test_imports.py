"""A factory PC installs only `.[agent]`: the agent must never pull in torch, the trainer or the converters."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import pkgutil, importlib, sys
import edge_agent
for module in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
    importlib.import_module(module.name)
# A copy: OpenVINO's import leaves a thread behind that may still be importing.
leaked = sorted(m for m in list(sys.modules) if m.split(".")[0] in ("torch", "trainer", "converters"))
print(",".join(leaked))
"""


def test_every_agent_module_imports_without_torch_trainer_or_converters() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


SHARED = (
    "edge_agent.archive",
    "edge_agent.bundle",
    "edge_agent.console",
    "edge_agent.geometry",
    "edge_agent.hashing",
    "edge_agent.imageio",
    "edge_agent.runtimes.base",
)
HEAVY = ("torch", "openvino", "onnxruntime", "paho", "harvesters", "asyncua", "pymodbus", "trainer", "converters")
SHARED_CHECK = """
import importlib, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
leaked = sorted({m.split(".")[0] for m in list(sys.modules)} & set(sys.argv[2].split(",")))
print(",".join(leaked))
"""


def test_the_shared_contract_modules_import_nothing_heavy() -> None:
    command = [sys.executable, "-c", SHARED_CHECK, ",".join(SHARED), ",".join(HEAVY)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_agent_loads_the_plc_libraries_only_when_a_plc_output_is_on() -> None:
    command = [sys.executable, "-c", SHARED_CHECK, "edge_agent.cli", "asyncua,pymodbus"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
