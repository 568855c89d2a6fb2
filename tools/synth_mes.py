"""Synthetic MES context: per-wafer process logs (48 named parameters) and operator notes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.process_params import DEFAULT_PARAMETERS, THERMAL_CHEMICAL

# name: (nominal, sigma, module). Wafers of one module share a latent drift factor, which correlates them.
PARAMETER_SPECS: dict[str, tuple[float, float, str]] = {
    "litho_dose_mj_cm2": (32.0, 0.4, "litho"),
    "litho_focus_offset_nm": (0.0, 8.0, "litho"),
    "litho_overlay_x_nm": (0.0, 1.5, "litho"),
    "litho_overlay_y_nm": (0.0, 1.5, "litho"),
    "resist_thickness_nm": (85.0, 1.2, "litho"),
    "resist_reflectance_pct": (2.0, 0.15, "litho"),
    "pab_temp_c": (90.0, 0.3, "litho"),
    "peb_temp_c": (110.0, 0.3, "litho"),
    "etch_rf_power_w": (600.0, 6.0, "etch"),
    "etch_bias_v": (350.0, 4.0, "etch"),
    "etch_pressure_mtorr": (20.0, 0.4, "etch"),
    "etch_time_s": (45.0, 0.6, "etch"),
    "etch_cf4_sccm": (80.0, 1.0, "etch"),
    "etch_o2_sccm": (12.0, 0.3, "etch"),
    "etch_ar_sccm": (150.0, 2.0, "etch"),
    "etch_endpoint_s": (42.0, 0.8, "etch"),
    "dep_temp_c": (400.0, 2.0, "dep"),
    "dep_pressure_torr": (2.5, 0.05, "dep"),
    "dep_rate_nm_min": (120.0, 2.5, "dep"),
    "dep_thickness_nm": (500.0, 6.0, "dep"),
    "dep_sih4_sccm": (250.0, 3.0, "dep"),
    "dep_n2o_sccm": (3500.0, 40.0, "dep"),
    "dep_rf_power_w": (800.0, 8.0, "dep"),
    "dep_uniformity_pct": (1.5, 0.2, "dep"),
    "anneal_temp_c": (1050.0, 3.0, "thermal"),
    "anneal_time_s": (30.0, 0.5, "thermal"),
    "anneal_ramp_c_s": (75.0, 2.0, "thermal"),
    "anneal_o2_ppm": (5.0, 1.0, "thermal"),
    "chuck_temp_c": (60.0, 0.5, "thermal"),
    "chamber_wall_temp_c": (65.0, 0.8, "thermal"),
    "lamp_power_pct": (72.0, 1.2, "thermal"),
    "cooldown_time_s": (90.0, 2.0, "thermal"),
    "wet_hf_conc_pct": (1.0, 0.02, "wet"),
    "wet_bath_temp_c": (25.0, 0.3, "wet"),
    "wet_rinse_resistivity_mohm": (17.8, 0.1, "wet"),
    "wet_dip_time_s": (60.0, 0.8, "wet"),
    "sc1_temp_c": (70.0, 0.6, "wet"),
    "sc1_conc_pct": (5.0, 0.1, "wet"),
    "dry_spin_rpm": (2000.0, 25.0, "wet"),
    "chem_ph": (7.0, 0.08, "wet"),
    "cmp_down_force_psi": (3.0, 0.08, "cmp"),
    "cmp_platen_rpm": (90.0, 1.5, "cmp"),
    "cmp_slurry_flow_ml_min": (200.0, 4.0, "cmp"),
    "cmp_pad_age_h": (20.0, 6.0, "cmp"),
    "cleanroom_temp_c": (21.0, 0.15, "env"),
    "cleanroom_rh_pct": (43.0, 1.0, "env"),
    "particle_count_m3": (300.0, 60.0, "env"),
    "exhaust_flow_pct": (85.0, 2.0, "env"),
}
assert tuple(PARAMETER_SPECS) == DEFAULT_PARAMETERS

NOMINAL = np.array([spec[0] for spec in PARAMETER_SPECS.values()])
SIGMA = np.array([spec[1] for spec in PARAMETER_SPECS.values()])
_MODULES = sorted({spec[2] for spec in PARAMETER_SPECS.values()})
_MODULE_OF = np.array([_MODULES.index(spec[2]) for spec in PARAMETER_SPECS.values()])
# Fixed signed loadings on the module factor: e.g. deposition rate and thickness move together.
_LOADING = 0.6 * np.where(np.arange(len(NOMINAL)) % 3 == 2, -1.0, 1.0)
_THERMAL_CHEMICAL_IDX = np.array([i for i, n in enumerate(DEFAULT_PARAMETERS) if n in THERMAL_CHEMICAL])
_NON_NEGATIVE = np.array([n.endswith(("_h", "_m3", "_ppm")) for n in DEFAULT_PARAMETERS])


def sample_process(rng: np.random.Generator, excursion: bool) -> dict[str, float]:
    """One wafer's parameters in ``DEFAULT_PARAMETERS`` order, correlated within a process module.

    With ``excursion``, three to six thermal/chemical parameters sit 4-6 sigma off nominal.
    """
    factors = rng.standard_normal(len(_MODULES))[_MODULE_OF]
    z = _LOADING * factors + np.sqrt(1.0 - _LOADING**2) * rng.standard_normal(len(NOMINAL))
    if excursion:
        hit = rng.choice(_THERMAL_CHEMICAL_IDX, size=int(rng.integers(3, 7)), replace=False)
        z[hit] = rng.choice([-1.0, 1.0], size=hit.size) * rng.uniform(4.0, 6.0, size=hit.size)
    values = NOMINAL + SIGMA * z
    values[_NON_NEGATIVE] = np.maximum(values[_NON_NEGATIVE], 0.0)
    return {name: round(float(v), 4) for name, v in zip(DEFAULT_PARAMETERS, values)}


_GENERIC_NOTES = (
    "routine inspection no issues",
    "lot released from hold",
    "shift handover nothing to report",
    "stepper pm completed yesterday",
    "recipe verified by process engineer",
    "tool requalified after maintenance",
    "sampling plan changed for this lot",
)
_EXCURSION_NOTES = (
    "anneal chamber alarm during run",
    "rtp lamp power alarm acknowledged",
    "wet bench temperature alarm",
    "sc1 bath concentration out of spec",
    "chamber wall temp high warning",
    "hf bath refilled late",
)
_LOOK_NOTES: dict[str, tuple[str, ...]] = {
    "PART-SM": ("particle seen near notch", "small particles on edge dies"),
    "PART-MD": ("particle seen near notch", "foreign material on surface"),
    "PART-LG": ("large foreign material on wafer", "flake seen after deposition"),
    "SCR-FINE": ("fine scratch seen after handling", "light scratch near center"),
    "SCR-WIDE": ("handler arm scrape suspected", "deep scratch visible by eye"),
    "CMP-ERR": ("cmp dishing suspected", "pad near end of life"),
    "LAYER-SHIFT": ("overlay alarm on stepper", "alignment mark issue"),
    "BRIDGE": ("bump bridging seen", "plating overflow between bumps"),
    "MISS-BUMP": ("missing bump seen", "plating skip suspected"),
    "BUMP-SM": ("small bumps after plating", "plating current low"),
    "BUMP-DEF": ("bump shape irregular", "reflow profile suspect"),
    "CRACK": ("crack near edge die", "wafer chipped at handling"),
    "RESIDUE": ("residue after clean", "watermarks seen after dry"),
    "DISCOLOR": ("discoloration seen on wafer", "color shift near center"),
    "PATTERN": ("focus spot on stepper", "litho rework done"),
}


def operator_note(rng: np.random.Generator, excursion: bool, looks: Sequence[str], rate: float = 0.6) -> str | None:
    """A short free-text note for a wafer with probability ``rate``, else None.

    Notes are often but not always informative: about an excursion's alarm, about one of the defect ``looks`` seen
    on the wafer (a cosmetic discolouration gets noted too), or generic.
    """
    if rng.random() >= rate:
        return None
    defects = [look for look in looks if look in _LOOK_NOTES]
    if excursion and rng.random() < 0.6:
        pool = _EXCURSION_NOTES
    elif defects and rng.random() < 0.5:
        pool = _LOOK_NOTES[defects[rng.integers(len(defects))]]
    else:
        pool = _GENERIC_NOTES
    return pool[rng.integers(len(pool))]
