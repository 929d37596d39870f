"""The results schema: write_result refuses a declared group that breaks its entry, with a
message naming the group and the mismatch, and writes nothing; undeclared groups pass."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from layerdrift.storage import list_results, open_result, write_result
from layerdrift.storage.results_schema import (
    RESULT_GROUPS,
    ResultGroup,
    ResultSchemaError,
    groups_of_stage,
)

PREFIX = r"results group 'transfer_fvu' \(written by the features stage\) does not match "


@pytest.fixture
def url(tmp_path) -> str:
    return str(tmp_path / "results.zarr")


def test_a_declared_group_is_checked_before_it_is_written(url):
    group = RESULT_GROUPS["transfer_fvu"]
    good = group.new(np.arange(12.0).reshape(4, 3), layer=[0, 1, 2])
    assert list(good.direction.values) == list(group.labels["direction"])
    write_result(url, "transfer_fvu", good)
    lacking = r"direction lacks labels \['base_on_base', 'finetuned_on_finetuned'\]"
    cases = [
        (good.T, r"dims \('layer', 'direction'\), expected \('direction', 'layer'\)"),
        (good.isel(direction=[0, 1]), lacking),
        (good.astype(np.int64), r"dtype int64, expected float"),
    ]
    for bad, message in cases:
        with pytest.raises(
            ResultSchemaError, match=PREFIX + r"storage/results_schema.py: " + message
        ):
            write_result(url, "transfer_fvu", bad)
    stored = open_result(url, "transfer_fvu")["transfer_fvu"]
    xr.testing.assert_equal(stored.load(), good)


def test_coordinates_and_datasets_are_checked(url):
    density = RESULT_GROUPS["latent_density"]
    values = np.zeros((1, 2, 3), dtype=np.int64)
    coords = {"checkpoint": ["base"], "layer": [0, 1], "bin": [-6.0, -4.0, -2.0]}
    with pytest.raises(ResultSchemaError, match=r"'latent_density' .* no coordinate 'bin_upper'"):
        write_result(url, "latent_density", xr.DataArray(values, dims=density.dims, coords=coords))
    with pytest.raises(ResultSchemaError, match=r"the dataset has no variable 'latent_density'"):
        write_result(url, "latent_density", xr.Dataset({"other": ("layer", [1.0, 2.0])}))
    assert list_results(url) == []


def test_undeclared_groups_are_written_unchecked(url):
    write_result(url, "my_extra", xr.DataArray([1, 2], dims="anything"))
    assert list_results(url) == ["my_extra"]


def test_entries_are_consistent():
    assert [g.name for g in groups_of_stage("sae")] == [
        "sae_metrics",
        "sae_recovery",
        "latent_density",
    ]
    with pytest.raises(ValueError, match="labels or coords on unknown dims"):
        ResultGroup("x", ("layer",), "float", "test", "", labels={"metric": ("a",)})
    with pytest.raises(ValueError, match="give the size of dim 'layer'"):
        RESULT_GROUPS["matched_fraction"].shape({})
    for group in RESULT_GROUPS.values():
        stages = {"similarity", "importance", "sae", "features", "report"}
        assert group.description and group.stage in stages
