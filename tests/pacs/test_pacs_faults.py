"""Bad input and faults of ``ragsam pacs``: one line, exit 2, nothing (half-)stored; cut connections recover.

Every refusal is checked on a real Orthanc, and so is the PACS afterwards (no SEG, the same
instance count). The connection cuts SIGKILL Orthanc in the middle of a fetch and of a store.
"""

from __future__ import annotations

import json

import pydicom
import pytest
from dicom_fixtures import SERIES, STUDY, relabel_syntax, write_series
from orthanc_server import PASSWORD, USER, free_port

from ragsam.cli.main import run_cli
from ragsam.errors import InputError


def _segment(url: str, bank, *extra: str) -> list[str]:
    return ["pacs", "segment", url, "--study", STUDY, "--index", str(bank), "--sam2", "tiny", "--k", "2",
            "--device", "cpu", *extra]


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("ragsam: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_pacs_down_wrong_url_and_401(pacs_env, ct_dicom, tiny_bank, tmp_path, monkeypatch, capsys):
    pacs_env.upload(write_series(ct_dicom, tmp_path / "series"))
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert run_cli(_segment(down, tiny_bank)) == 2
    _one_line_error(capsys, down, "cannot connect", "connection refused")
    assert run_cli(["pacs", "list", f"{pacs_env.url}/not-dicomweb"]) == 2
    _one_line_error(capsys, "HTTP 404", "DICOMweb root")
    assert run_cli(["pacs", "list", "ftp://127.0.0.1/dicom-web"]) == 2
    _one_line_error(capsys, "not a DICOMweb URL")
    monkeypatch.setenv("RAGSAM_PACS_PASSWORD", "wrong")
    assert run_cli(_segment(pacs_env.dicomweb, tiny_bank)) == 2
    err = _one_line_error(capsys, "HTTP 401", f"user '{USER}' from RAGSAM_PACS_USER")
    assert "wrong" not in err  # the secret is never printed
    monkeypatch.delenv("RAGSAM_PACS_USER")
    monkeypatch.delenv("RAGSAM_PACS_PASSWORD")
    assert run_cli(["pacs", "list", pacs_env.dicomweb]) == 2
    _one_line_error(capsys, "HTTP 401", "no credentials")
    assert pacs_env.modalities(STUDY) == ["CT"] and pacs_env.instance_count() == 20


def test_credentials_file(pacs_env, ct_dicom, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAGSAM_PACS_USER")
    monkeypatch.delenv("RAGSAM_PACS_PASSWORD")
    pacs_env.upload(write_series(ct_dicom, tmp_path / "series"))
    secret = tmp_path / "pacs.json"
    secret.write_text(json.dumps({"user": USER, "password": PASSWORD}), encoding="utf-8")
    secret.chmod(0o644)
    assert run_cli(["pacs", "list", pacs_env.dicomweb, "--credentials", str(secret)]) == 2
    _one_line_error(capsys, str(secret), "mode 0644", "chmod 600")
    secret.chmod(0o600)
    assert run_cli(["pacs", "list", pacs_env.dicomweb, "--credentials", str(secret), "--json"]) == 0
    assert [r["study_uid"] for r in json.loads(capsys.readouterr().out)] == [STUDY]
    secret.write_text(json.dumps({"user": USER}), encoding="utf-8")
    assert run_cli(["pacs", "list", pacs_env.dicomweb, "--credentials", str(secret)]) == 2
    _one_line_error(capsys, str(secret), '{"user": ..., "password": ...}')
    monkeypatch.setenv("RAGSAM_PACS_USER", USER)  # a user without a password
    assert run_cli(["pacs", "list", pacs_env.dicomweb]) == 2
    _one_line_error(capsys, "RAGSAM_PACS_PASSWORD is not")


def test_unknown_study_series_and_bad_uids(pacs_env, ct_dicom, tiny_bank, tmp_path, capsys):
    pacs_env.upload(write_series(ct_dicom, tmp_path / "series"))
    assert run_cli(_segment(pacs_env.dicomweb, tiny_bank)[:4] + ["1.2.3.999", *_segment("", tiny_bank)[5:]]) == 2
    _one_line_error(capsys, "no study 1.2.3.999")
    assert run_cli(_segment(pacs_env.dicomweb, tiny_bank, "--series", "1.2.3.4")) == 2
    _one_line_error(capsys, "has no series 1.2.3.4", SERIES)
    assert run_cli(_segment(pacs_env.dicomweb, tiny_bank, "--series", "../../etc")) == 2
    _one_line_error(capsys, "is not a DICOM UID")
    assert run_cli(_segment(pacs_env.dicomweb, tiny_bank)[:-8] + ["--device", "cpu"]) == 2  # no model at all
    _one_line_error(capsys, "give --index BANK")
    assert pacs_env.modalities(STUDY) == ["CT"] and pacs_env.instance_count() == 20


def _mr(_i: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    ds.Modality, ds.SOPClassUID = "MR", "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def _missing(i: int, ds: pydicom.Dataset) -> pydicom.Dataset | None:
    return None if i == 10 else ds


def _uneven(i: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    if i >= 10:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z - 0.5]
    return ds


def _enhanced(_i: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    return ds


@pytest.mark.parametrize(("change", "needles"), [
    (_mr, ("is MR, not CT",)),
    (_missing, ("missing slices or irregular spacing",)),
    (_uneven, ("missing slices or irregular spacing", "(2.5 mm); the other slices are 2 mm apart")),
    (_enhanced, ("multi-frame (Enhanced) CT",)),
    (relabel_syntax("1.2.840.10008.1.2.4.201"),
     ("transfer syntax High-Throughput JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.201)",
      "cannot decode")),
], ids=["not-ct", "missing-slice", "uneven-spacing", "enhanced-ct", "htj2k"])
def test_bad_series_are_refused_and_nothing_is_stored(pacs_env, ct_dicom, tiny_bank, tmp_path, capsys, change,
                                                      needles):
    pacs_env.upload(write_series(ct_dicom, tmp_path / "series", change=change))
    count = pacs_env.instance_count()
    series = ["--series", SERIES]  # named, so the MR series is refused by its modality, not as "no CT series"
    assert run_cli(_segment(pacs_env.dicomweb, tiny_bank, *series)) == 2
    _one_line_error(capsys, SERIES, *needles)
    assert "SEG" not in pacs_env.modalities(STUDY) and pacs_env.instance_count() == count


def test_study_with_several_ct_series_needs_series(pacs_env, ct_dicom, tiny_bank, tmp_path, capsys):
    pacs_env.upload(write_series(ct_dicom, tmp_path / "a"))
    pacs_env.upload(write_series(ct_dicom, tmp_path / "b", series=SERIES + ".2", uid_suffix=".2"))
    assert run_cli(_segment(pacs_env.dicomweb, tiny_bank)) == 2
    _one_line_error(capsys, "has 2 CT series; choose one with --series", SERIES + ".2")


def test_a_seg_of_another_series_is_refused(pacs_env, ct_dicom, tiny_bank, tmp_path, capsys):
    from ragsam.data.dicom_seg import build_dicom_seg
    from ragsam.data.volume import read_image, read_labels
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials

    pacs = Pacs(pacs_env.dicomweb, Credentials(user=USER, password=PASSWORD, source="test"))
    a = write_series(ct_dicom, tmp_path / "a")
    pacs_env.upload(a)
    pacs_env.upload(write_series(ct_dicom, tmp_path / "b", series=SERIES + ".2", uid_suffix=".2"))
    image = read_image(a)
    seg = build_dicom_seg(read_labels(ct_dicom["labels"], reference=image), a, "btcv", algorithm="manual",
                          model_key="reader-1")
    pacs.store(seg, STUDY)
    base = ["pacs", "add-support", pacs_env.dicomweb, "--study", STUDY, "--seg", str(seg.SOPInstanceUID),
            "--index", str(tiny_bank)]
    assert run_cli([*base, "--series", SERIES + ".2"]) == 2  # it segments series A, not B
    _one_line_error(capsys, f"segments series {SERIES}, not --series {SERIES}.2")
    # a SEG stored in this study that references a series of another study
    other = write_series(ct_dicom, tmp_path / "other", study=STUDY + ".9", series=SERIES + ".9", uid_suffix=".9")
    stray = build_dicom_seg(read_labels(ct_dicom["labels"], reference=read_image(other)), other, "btcv",
                            algorithm="manual", model_key="reader-2")
    stray.StudyInstanceUID = STUDY
    pacs.store(stray, STUDY)
    assert run_cli([*base[:6], str(stray.SOPInstanceUID), *base[7:]]) == 2
    _one_line_error(capsys, f"segments series {SERIES}.9, which is not in study {STUDY}")
    assert run_cli([*base[:6], SERIES, *base[7:]]) == 2  # the CT series is no SEG
    _one_line_error(capsys, "holds 20 instances")


def test_connection_cut_mid_fetch_then_a_rerun_fetches_the_rest(pacs_env, ct_dicom, tiny_bank, tmp_path):
    from ragsam.pacs.cache import InstanceCache
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials
    from ragsam.pacs.segment import PacsModel, pacs_segment

    pacs_env.upload(write_series(ct_dicom, tmp_path / "series"))
    pacs = Pacs(pacs_env.dicomweb, Credentials(user=USER, password=PASSWORD, source="test"))
    model = PacsModel(index=tiny_bank, sam2="tiny", k=2, device="cpu")
    cache = InstanceCache(tmp_path / "cache")

    def cut_after_ten(stage: str, done: int, total: int) -> None:
        if stage == "fetch" and done == 10:
            pacs_env.kill()

    with pytest.raises(InputError, match="while fetching instance"):
        pacs_segment(pacs, STUDY, model, cache=cache, progress=cut_after_ten)
    kept = len(list((tmp_path / "cache" / "instances").glob("*.dcm")))  # whole instances only
    assert 10 <= kept < 20 and not list((tmp_path / "cache" / "instances").glob(".*"))
    pacs_env.start()  # the same storage
    result = pacs_segment(pacs, STUDY, model, cache=cache)
    assert (result.fetched, result.cached, result.stored) == (20 - kept, kept, True)
    assert pacs_env.modalities(STUDY) == ["CT", "SEG"]


def test_connection_cut_mid_store_leaves_no_seg_and_a_rerun_stores_it(pacs_env, ct_dicom, tiny_bank, tmp_path):
    from ragsam.pacs.cache import InstanceCache
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials
    from ragsam.pacs.segment import PacsModel, pacs_segment

    pacs_env.upload(write_series(ct_dicom, tmp_path / "series"))
    pacs = Pacs(pacs_env.dicomweb, Credentials(user=USER, password=PASSWORD, source="test"))
    model = PacsModel(index=tiny_bank, sam2="tiny", k=2, device="cpu")
    cache = InstanceCache(tmp_path / "cache")
    sent: list[tuple[int, int]] = []

    def cut_halfway(stage: str, done: int, total: int) -> None:
        if stage == "store":
            sent.append((done, total))
            if done >= total // 2 and pacs_env.process is not None:
                pacs_env.kill()

    with pytest.raises(InputError, match="while storing"):
        pacs_segment(pacs, STUDY, model, cache=cache, progress=cut_halfway)
    total = sent[0][1]
    assert total > 100_000 and any(0 < d < total for d, _ in sent)  # killed with the body partly sent
    pacs_env.start()
    assert pacs_env.modalities(STUDY) == ["CT"] and pacs_env.instance_count() == 20  # no partial SEG
    result = pacs_segment(pacs, STUDY, model, cache=cache)
    assert (result.fetched, result.stored) == (0, True)
    assert pacs_env.modalities(STUDY) == ["CT", "SEG"] and pacs_env.instance_count() == 21
