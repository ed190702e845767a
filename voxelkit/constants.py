"""Physical constants shared by the models and the simulator (one definition each)."""

from __future__ import annotations

#: Half-life of carbon-11, **minutes** (20.364 min; e.g. NNDC / Laboratoire National Henri Becquerel tables).
#: The default for decay handling in activity-based weights and for the simulator's decay and noise model.
C11_HALF_LIFE_MIN = 20.364

#: Half-life of fluorine-18, minutes (for reference; give ``half_life_min`` explicitly for F-18 tracers).
F18_HALF_LIFE_MIN = 109.77

__all__ = ["C11_HALF_LIFE_MIN", "F18_HALF_LIFE_MIN"]
