"""Typed configuration of the robustness evaluation (:mod:`.robustness`, issue 14)."""

from __future__ import annotations

from dataclasses import dataclass, field

from s12mae.evaluation.config import EvalConfig
from s12mae.evaluation.degrade import CloudConfig

__all__ = ["FAMILIES", "INPUTS", "RobustnessConfig"]

INPUTS = ("s2", "s1", "both")
FAMILIES = {"s2": ("s2",), "s1": ("s1",), "both": ("s2", "s1")}
"""Sensor families (``sensors.yaml``) an input needs patch embeddings for."""


@dataclass
class RobustnessConfig:
    """Encoders x inputs x degradations x seeds on one task (frozen encoders, clean-trained heads)."""

    checkpoints: dict[str, str] = field(default_factory=dict)
    """Method name -> ``encoder.safetensors`` (or ``random`` / ``pixels``), in row order."""
    task: str = "sen1floods11"
    """Task (its data source and size from ``run.data``); it must offer S1 (the simulated tasks,
    real ``sen1floods11`` and ``bigearthnet`` do)."""
    inputs: list[str] = field(default_factory=lambda: list(INPUTS))
    """Which of ``s2``, ``s1``, ``both`` to evaluate."""
    shifts: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    """S1 shifts against S2, in pixels (down and right; 0 is the clean score)."""
    clouds: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])
    """Cloud-covered fractions of the S2 image (0 is the clean score)."""
    cloud: CloudConfig = field(default_factory=CloudConfig)
    """How the clouds look (brightness, cell size, edges, seed)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the head (and of a random encoder); mean +- std over them."""
    s1_sensor: str = "s1_grd"
    """Sensor key of the S1 input the task adds to its samples."""
    mix_seed: int = 0
    """Seed of the fixed complementary S1/S2 mix of the ``both`` input."""
    out_dir: str = "runs/robustness"
    """Writes ``robustness.md``, ``robustness.csv``, ``robustness.json``, ``<method>.png``."""
    run: EvalConfig = field(default_factory=EvalConfig)
    """Settings of every head (fit, head, data, device, ...); ``checkpoint``, ``seed``, ``task``
    and ``out_dir`` are set per run and the scenario is always ``frozen``."""

    def __post_init__(self) -> None:
        if isinstance(self.run, dict):
            self.run = EvalConfig(**self.run)
        if isinstance(self.cloud, dict):
            self.cloud = CloudConfig(**self.cloud)
        self.inputs, self.shifts, self.clouds, self.seeds = (list(v) for v in (self.inputs, self.shifts,
                                                                              self.clouds, self.seeds))
        checks = [(bool(self.checkpoints), "checkpoints: give at least one method name -> encoder file"),
                  (bool(self.inputs) and all(i in INPUTS for i in self.inputs), f"inputs: choose from {INPUTS}, got {self.inputs}"),
                  (self.run.scenario == "frozen",
                   f"run.scenario: the robustness evaluation keeps encoders frozen; got {self.run.scenario!r}"),
                  (all(isinstance(n, int) and n >= 0 for n in self.shifts), f"shifts: integers >= 0, got {self.shifts}"),
                  (all(0.0 <= f <= 1.0 for f in self.clouds), f"clouds: fractions in [0, 1], got {self.clouds}"),
                  (bool(self.seeds) and all(isinstance(s, int) and s >= 0 for s in self.seeds),
                   f"seeds: integers >= 0, got {self.seeds}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"robustness.{message}")

    def conditions(self, inp: str) -> list[tuple[str, float]]:
        """``(kind, level)`` of every test condition of input ``inp``: ``clean`` first."""
        out: list[tuple[str, float]] = [("clean", 0)]
        if "s1" in FAMILIES[inp]:
            out += [("shift", n) for n in self.shifts if n > 0]
        if "s2" in FAMILIES[inp]:
            out += [("cloud", f) for f in self.clouds if f > 0]
        return out

    def columns(self) -> list[tuple[str, float]]:
        """Every condition of any input, in table order."""
        return [("clean", 0), *(("shift", n) for n in self.shifts if n > 0), *(("cloud", f) for f in self.clouds if f > 0)]
