"""BUS-BRA as downloaded (Images/bus_ID.png, Masks/mask_ID.png, bus_data.csv), and the folders options it
brought: capitalised folders, the mask_ prefix and --mask-pattern, --categories FILE:COLUMN, the device."""

from __future__ import annotations

import csv
import time

import pytest
from builders import gradient_image, make_busbra, save_png
from conftest import shared_path
from typer.testing import CliRunner

from diffboost.cli import app
from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.data.readers import detect_format, get_reader
from diffboost.errors import DataError

runner = CliRunner()


def _cases(root) -> dict[str, str]:
    with open(root / "bus_data.csv", newline="") as fh:
        return {r["ID"]: r["Case"] for r in csv.DictReader(fh)}


def _patients_apart(ps, case_of: dict[str, str]) -> None:
    """No patient in two parts of a fold, nor in two test folds."""
    for f in ps.folds:
        parts = [{case_of[c] for c in getattr(f, p)} for p in ("train", "val", "test")]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    tested = [{case_of[c] for c in f.test} for f in ps.folds]
    assert sum(map(len, tested)) == len(set().union(*tested)) == len(set(case_of.values()))


def test_busbra_is_detected_and_masks_pair_by_the_mask_prefix(tmp_path):
    root = make_busbra(tmp_path / "BUS-BRA")
    assert detect_format(root) == "busbra"
    refs = {r.case_id: r for r in get_reader(root, PrepareConfig()).scan()}
    assert len(refs) == 9 and refs["bus_0002-l"].masks[0].name == "mask_0002-l.png"
    assert (refs["bus_0002-l"].group, refs["bus_0002-r"].group, refs["bus_0006-s"].group) == ("2", "2", "6")
    assert (refs["bus_0006-s"].modality, refs["bus_0006-s"].organ, refs["bus_0006-s"].category) == ("US", "Breast", "malignant")
    # as plain folders: Images/ + Masks/ found in any case, the mask_ prefix pairs them
    (root / "bus_data.csv").rename(root / "table.csv")
    (root / "Images").rename(root / "IMAGES")
    assert detect_format(root) == "folders"
    refs = get_reader(root, PrepareConfig()).scan()
    assert len(refs) == 9 and all(r.masks[0].name == "mask_" + r.case_id[4:] + ".png" for r in refs)


def test_busbra_keeps_each_patient_in_one_fold_and_the_device_in_the_manifest(tmp_path):
    root = make_busbra(tmp_path / "BUS-BRA")
    ps = prepare(root, tmp_path / "prepared", PrepareConfig(size=32, folds=3, duplicates=None), progress=False)
    assert ps.meta["format"] == "busbra" and ps.meta["labels"] == {"0": "background", "1": "lesion"}
    assert ps.meta["prompts"] == ["US, Breast, benign", "US, Breast, malignant"]
    assert ps.meta["case_groups"]["groups"] == 6 and ps.meta["case_groups"]["with_several_images"] == 3
    _patients_apart(ps, _cases(root))
    devices = {r["case_id"]: r["device"] for r in ps.manifest}
    assert devices["bus_0010-r"] == "Toshiba Aplio 300 @10-14MHz" and devices["bus_0013-s"] == "GE Logiq 7 @10-14MHz"


def test_categories_file_column_puts_a_table_column_in_the_prompt(tmp_path):
    root = make_busbra(tmp_path / "BUS-BRA")
    reader = get_reader(root, PrepareConfig(categories="bus_data.csv:Histology"))
    refs = {r.case_id: r for r in reader.scan()}
    assert reader.tables == [root / "bus_data.csv"]
    assert refs["bus_0006-s"].category == "invasive ductal carcinoma"
    refs = {r.case_id: r for r in get_reader(root, PrepareConfig(categories="bus_data.csv:birads")).scan()}
    assert refs["bus_0011-s"].category == "BIRADS 5"  # a number keeps its column's name; a column in any case
    # plain folders: a table whose ID column leaves out the image stem's first token, at an absolute path
    table = tmp_path / "classes.csv"
    table.write_text("ID,Class\n" + "".join(f"{i},{'Malignant' if i.endswith('s') else 'Benign'}\n" for i in _cases(root)
                                           if i != "bus_0002-l").replace("bus_", ""))
    with pytest.raises(DataError, match="no Class for bus_0002-l"):
        get_reader(root, PrepareConfig(format="folders", categories=f"{table}:Class")).scan()
    reader = get_reader(root, PrepareConfig(format="folders", categories=f"{table}:Class", skip_bad=True))
    refs = {r.case_id: r for r in reader.scan()}
    assert reader.tables == [table]  # what the source fingerprint must hash besides images and masks
    assert len(refs) == 8 and refs["bus_0006-s"].category == "malignant" and refs["bus_0002-r"].category == "benign"
    assert refs["bus_0002-r"].group is None and refs["bus_0002-r"].device is None  # no BUS-BRA table, no patient


def test_a_bad_column_is_one_error_naming_the_file_and_the_column(tmp_path):
    root = make_busbra(tmp_path / "BUS-BRA")
    res = runner.invoke(app, ["prepare", str(root), "--out", str(tmp_path / "o"), "--categories", "bus_data.csv:Pathologie",
                              "--size", "16", "-q"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(root / "bus_data.csv") in lines[0] and "no column 'Pathologie'" in lines[0]
    assert "Pathology" in lines[0]  # the columns it has
    assert not (tmp_path / "o").exists()
    res = runner.invoke(app, ["prepare", str(root), "--out", str(tmp_path / "o"), "--categories", "nope.csv:Pathology", "-q"])
    assert res.exit_code == 2 and "nope.csv: table not found" in res.output


def test_mask_pattern_names_other_layouts_and_is_checked_up_front(tmp_path):
    root = tmp_path / "set"
    for i in range(3):
        save_png(root / "images" / f"scan_{i}.png", gradient_image(30, 40, i))
        save_png(root / "masks" / f"gt-{i}.png", (gradient_image(30, 40, i) > 120).astype("uint8") * 255)
    with pytest.raises(DataError, match="image without mask .*see --mask-pattern"):
        get_reader(root, PrepareConfig()).scan()
    refs = get_reader(root, PrepareConfig(mask_pattern="gt-{id}")).scan()
    assert [r.masks[0].name for r in refs] == ["gt-0.png", "gt-1.png", "gt-2.png"]
    res = runner.invoke(app, ["prepare", str(root), "--out", str(tmp_path / "o"), "--mask-pattern", "gt-{id}.png",
                              "--size", "16", "--folds", "2", "--no-duplicates", "-q"])
    assert res.exit_code == 0, res.output
    for bad in ("gt-{name}", "masks/{stem}", "gt-{id", "gt"):
        with pytest.raises(ValueError, match="mask_pattern"):
            PrepareConfig(mask_pattern=bad)
    res = runner.invoke(app, ["prepare", str(root), "--out", str(tmp_path / "o2"), "--mask-pattern", "{case}", "-q"])
    assert res.exit_code == 2 and "{stem}" in res.output and "{id}" in res.output
    # two images whose rule names one mask: refused, not paired twice
    save_png(root / "images" / "other_1.png", gradient_image(30, 40, 5))
    with pytest.raises(DataError, match="gt-1.png: the mask pairs with two images, other_1 and scan_1"):
        get_reader(root, PrepareConfig(mask_pattern="gt-{id}")).scan()


@pytest.mark.realdata
@pytest.mark.slow
def test_real_busbra_prepares_as_downloaded_with_each_patient_in_one_fold(tmp_path):
    src = shared_path("BUS-BRA")
    t0 = time.perf_counter()
    ps = prepare(src, tmp_path / "prepared", PrepareConfig(size=32), progress=False)
    print(f"prepare BUS-BRA at 32 px: {time.perf_counter() - t0:.1f} s")
    case_of = _cases(src)
    assert ps.meta["format"] == "busbra" and ps.meta["num_cases"] == len(case_of) and ps.meta["skipped"] == []
    assert ps.meta["case_groups"]["groups"] == len(set(case_of.values()))
    assert ps.meta["prompts"] == ["US, Breast, benign", "US, Breast, malignant"]
    _patients_apart(ps, case_of)
    with open(src / "bus_data.csv", newline="") as fh:
        truth = {r["ID"]: (r["Pathology"], r["Device"]) for r in csv.DictReader(fh)}
    assert all((r["category"], r["device"]) == truth[r["case_id"]] for r in ps.manifest)
    assert all(r["prompt"] == f"US, Breast, {r['category']}" for r in ps.manifest)
