"""The recipe's named process parameters: their order fixes the classifier's process vector."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# 48 parameters logged by MES per wafer, grouped by process module. Thermal and chemical groups carry
# the excursions that make DISCOLOR a real defect (DESIGN 3.4).
DEFAULT_PARAMETERS: tuple[str, ...] = (
    # lithography
    "litho_dose_mj_cm2", "litho_focus_offset_nm", "litho_overlay_x_nm", "litho_overlay_y_nm",
    "resist_thickness_nm", "resist_reflectance_pct", "pab_temp_c", "peb_temp_c",
    # etch
    "etch_rf_power_w", "etch_bias_v", "etch_pressure_mtorr", "etch_time_s",
    "etch_cf4_sccm", "etch_o2_sccm", "etch_ar_sccm", "etch_endpoint_s",
    # deposition
    "dep_temp_c", "dep_pressure_torr", "dep_rate_nm_min", "dep_thickness_nm",
    "dep_sih4_sccm", "dep_n2o_sccm", "dep_rf_power_w", "dep_uniformity_pct",
    # thermal (anneal / RTP)
    "anneal_temp_c", "anneal_time_s", "anneal_ramp_c_s", "anneal_o2_ppm",
    "chuck_temp_c", "chamber_wall_temp_c", "lamp_power_pct", "cooldown_time_s",
    # wet / chemical
    "wet_hf_conc_pct", "wet_bath_temp_c", "wet_rinse_resistivity_mohm", "wet_dip_time_s",
    "sc1_temp_c", "sc1_conc_pct", "dry_spin_rpm", "chem_ph",
    # CMP
    "cmp_down_force_psi", "cmp_platen_rpm", "cmp_slurry_flow_ml_min", "cmp_pad_age_h",
    # environment
    "cleanroom_temp_c", "cleanroom_rh_pct", "particle_count_m3", "exhaust_flow_pct",
)

THERMAL_CHEMICAL: frozenset[str] = frozenset(DEFAULT_PARAMETERS[24:40])

assert len(DEFAULT_PARAMETERS) == 48 and len(set(DEFAULT_PARAMETERS)) == 48


def process_vector(
    params: Mapping[str, object] | None, order: Sequence[str] = DEFAULT_PARAMETERS
) -> tuple[np.ndarray, bool]:
    """Values in ``order`` as float32; missing or non-finite values become 0.

    Returns the vector and whether the process modality is present at all.
    """
    vec = np.zeros(len(order), dtype=np.float32)
    if not params:
        return vec, False
    for i, name in enumerate(order):
        value = params.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            vec[i] = value
    return vec, True
