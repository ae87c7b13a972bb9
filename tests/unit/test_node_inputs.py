"""The nodes' inputs, declared once in caching/node_inputs.py: the one validation path and the configs it builds."""

from __future__ import annotations

from dataclasses import fields

import pytest
from dit_cache.caching.dbcache import DBCacheConfig
from dit_cache.caching.node_inputs import CACHEDIT, CALIBRATION, TEACACHE, dbcache_config, read, teacache_config
from dit_cache.caching.teacache import TeaCacheConfig
from dit_cache.caching.teacache_presets import PRESETS

TABLES = {"teacache": TEACACHE, "cachedit": CACHEDIT, "calibration": CALIBRATION}


@pytest.mark.parametrize("table", TABLES.values(), ids=TABLES)
def test_every_default_passes_its_own_check_and_every_input_has_a_tooltip(table) -> None:
    assert read(table, {}) == {i.name: i.check(i.default) for i in table}
    assert len({i.name for i in table}) == len(table)
    assert all(i.tooltip for i in table)


def test_defaults_that_are_config_fields_are_the_configs_own() -> None:
    assert dbcache_config(read(CACHEDIT, {})) == DBCacheConfig()
    teacache = {f.name: f.default for f in fields(TeaCacheConfig)}
    assert {i.name: i.default for i in TEACACHE if i.name in ("start_percent", "end_percent")} == {
        "start_percent": teacache["start_percent"],
        "end_percent": teacache["end_percent"],
    }


def test_a_linked_input_is_its_default_until_run_time() -> None:
    """ComfyUI validates a linked widget as None: the others are still checked, against its default."""
    assert read(TEACACHE, {"rel_l1_thresh": None})["rel_l1_thresh"] == 0.2
    with pytest.raises(ValueError, match="end_percent"):
        read(TEACACHE, {"rel_l1_thresh": None, "end_percent": 2.0})


@pytest.mark.parametrize(
    ("table", "values", "message"),
    [
        (TEACACHE, {"rel_l1_thresh": -0.1}, "rel_l1_thresh must be a number between 0 and 10, got -0.1"),
        (TEACACHE, {"rel_l1_thresh": float("nan")}, "rel_l1_thresh must be a number between 0 and 10"),
        (TEACACHE, {"rel_l1_thresh": "0.2"}, "rel_l1_thresh must be a number"),
        (TEACACHE, {"target_speedup": 0.5}, "target_speedup must be a number between 1 and 20 (0 = off), got 0.5"),
        (TEACACHE, {"model_type": "sdxl"}, "model_type must be one of auto, flux"),
        (TEACACHE, {"cache_device": "gpu7"}, "cache_device must be one of main_device, cpu, got 'gpu7'"),
        (TEACACHE, {"coefficients": "1, two"}, "coefficients: cannot parse"),
        (CACHEDIT, {"Fn_compute_blocks": 0}, "Fn_compute_blocks must be a whole number between 1 and 128, got 0"),
        (CACHEDIT, {"Fn_compute_blocks": 1.5}, "Fn_compute_blocks must be a whole number"),
        (CACHEDIT, {"calibrator": 1}, "calibrator must be one of none, taylorseer, foca, dmd, got 1"),
        (CACHEDIT, {"dmd_history": 40}, "dmd_history must be a whole number between 2 and 32, got 40"),
        (CACHEDIT, {"taylorseer_order": 7}, "taylorseer_order must be a whole number between 1 and 4"),
        (CACHEDIT, {"scm_compute_bins": "6, x"}, "scm_compute_bins: cannot parse '6, x'"),
        (CACHEDIT, {"calibration": "mine"}, "calibration must be one of none or a calibrated preset 'user:<name>'"),
        (CALIBRATION, {"preset_name": "../x"}, "preset_name must be 1-64 letters"),
        (CALIBRATION, {"model_type": "user:mine"}, "model_type must be one of auto"),
    ],
)
def test_a_bad_value_is_rejected_naming_the_input_and_what_it_allows(table, values, message) -> None:
    with pytest.raises((TypeError, ValueError)) as error:
        read(table, values)
    assert message in str(error.value)


def test_values_come_back_as_the_configs_take_them() -> None:
    values = read(CACHEDIT, {"Fn_compute_blocks": 2.0, "target_speedup": 0, "calibration": "user:mine"})
    assert values["Fn_compute_blocks"] == 2 and isinstance(values["Fn_compute_blocks"], int)
    assert values["target_speedup"] == 0.0 and isinstance(values["target_speedup"], float)
    assert values["calibration"] == "user:mine"


def test_a_workflow_saved_with_enable_taylorseer_in_the_calibrators_place_keeps_its_meaning() -> None:
    """The editor stores widget values by position: enable_taylorseer's true/false now land on calibrator."""
    assert dbcache_config(read(CACHEDIT, {"calibrator": True})).calibrator == "taylorseer"
    assert dbcache_config(read(CACHEDIT, {"calibrator": False})).calibrator == "none"
    assert [spec.name for spec in CACHEDIT].index("calibrator") == 7  # enable_taylorseer's place


def test_scm_bins_count_only_for_a_custom_mask() -> None:
    bins = {"scm_compute_bins": "6, 2", "scm_cache_bins": "1"}
    assert dbcache_config(read(CACHEDIT, bins | {"scm_preset": "fast"})).scm_compute_bins == ()
    custom = dbcache_config(read(CACHEDIT, bins | {"scm_preset": "custom"}))
    assert (custom.scm_compute_bins, custom.scm_cache_bins) == ((6, 2), (1,))
    with pytest.raises(ValueError, match="scm_compute_bins must be a non-empty tuple"):
        dbcache_config(read(CACHEDIT, {"scm_preset": "custom"}))


def test_teacache_takes_the_presets_coefficients_unless_given_and_cache_device_cpu_offloads() -> None:
    preset = PRESETS["wan2.1_t2v_1.3B_ret"]
    config = teacache_config(read(TEACACHE, {"cache_device": "cpu"}), preset)
    assert config.coefficients == preset.coefficients and config.offload_device == "cpu"
    assert (config.warmup_steps, config.force_last_step) == (preset.warmup_steps, preset.force_last_step)
    assert teacache_config(read(TEACACHE, {"coefficients": "1, 0"}), preset).coefficients == (1.0, 0.0)
    with pytest.raises(ValueError, match="start_percent and end_percent"):
        teacache_config(read(TEACACHE, {"start_percent": 0.9, "end_percent": 0.1}), preset)


def test_accumulated_threshold_zero_is_off() -> None:
    assert dbcache_config(read(CACHEDIT, {})).max_accumulated_residual_diff_threshold is None
    limit = dbcache_config(read(CACHEDIT, {"max_accumulated_residual_diff_threshold": 2.5}))
    assert limit.max_accumulated_residual_diff_threshold == 2.5
