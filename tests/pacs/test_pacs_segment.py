"""``ragsam pacs list|segment|add-support`` against a real Orthanc (its DICOMweb plugin)."""

from __future__ import annotations

import json

import numpy as np
from dicom_fixtures import SERIES, STUDY, write_series
from orthanc_server import PASSWORD, USER

from ragsam.cli.main import run_cli


def _client(orthanc):
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials

    return Pacs(orthanc.dicomweb, Credentials(user=USER, password=PASSWORD, source="test"))


def _seg_items(orthanc):
    """The SEG instances of the study, found by QIDO-RS (a client independent of ragsam's)."""
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    client = DICOMwebClient(orthanc.dicomweb, session=create_session_from_user_pass(USER, PASSWORD))
    return client.search_for_instances(STUDY, search_filters={"Modality": "SEG"})


def test_list_shows_the_pushed_study(pacs_env, ct_dicom, tmp_path, capsys):
    pacs_env.upload(write_series(ct_dicom, tmp_path / "series"))
    assert run_cli(["pacs", "list", pacs_env.dicomweb, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["study_uid"], r["patient_id"], r["modalities"], r["series"], r["instances"]) for r in rows] == \
        [(STUDY, "RAGSAM-TEST-1", ["CT"], 1, 20)]
    assert run_cli(["pacs", "list", pacs_env.dicomweb]) == 0
    out = capsys.readouterr().out
    assert STUDY in out and "Test^Abdomen" in out and "1 studies" in out


def test_segment_stores_a_seg_equal_to_the_nifti_and_a_rerun_stores_nothing(pacs_env, ct_dicom, tiny_bank, tmp_path,
                                                                            capsys):
    from ragsam.data.dicom_seg import read_dicom_seg
    from ragsam.data.volume import read_image, read_labels

    folder = write_series(ct_dicom, tmp_path / "series")
    pacs_env.upload(folder)
    out = tmp_path / "labels.nii.gz"
    argv = ["pacs", "segment", pacs_env.dicomweb, "--study", STUDY, "--index", str(tiny_bank), "--sam2", "tiny",
            "--k", "2", "--device", "cpu", "-o", str(out), "--json"]
    assert run_cli(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["series_uid"], result["method"], result["stored"], result["fetched"], result["cached"]) == \
        (SERIES, "RAG", True, 20, 0)
    items = _seg_items(pacs_env)  # QIDO-RS finds the SEG in the study
    assert [i["00080018"]["Value"][0] for i in items] == [result["seg_sop_uid"]]
    assert pacs_env.modalities(STUDY) == ["CT", "SEG"] and pacs_env.instance_count() == 21

    seg = _client(pacs_env).retrieve(STUDY, result["seg_series_uid"], result["seg_sop_uid"])
    image = read_image(folder)
    labels = read_dicom_seg(seg, image, source_series=folder)
    written = read_labels(out).array
    assert labels.shape == written.shape == (20, 512, 512)
    assert np.array_equal(labels, written) and sorted(set(np.unique(written).tolist()) - {0}) == result["organs"]

    # `ragsam segment` on the same series writes the very same labels (one code path)
    local = tmp_path / "local.nii.gz"
    assert run_cli(["segment", str(folder), "-o", str(local), "--index", str(tiny_bank), "--sam2", "tiny", "--k", "2",
                    "--device", "cpu"]) == 0
    assert np.array_equal(read_labels(local).array, written)

    capsys.readouterr()
    assert run_cli([*argv, "--force"]) == 0  # rerun: nothing fetched, segmented or stored again
    again = json.loads(capsys.readouterr().out)
    assert (again["stored"], again["fetched"], again["cached"], again["seg_sop_uid"]) == \
        (False, 0, 20, result["seg_sop_uid"])
    assert pacs_env.instance_count() == 21
    assert run_cli(argv) == 2  # the local copy is not overwritten without --force
    assert "already exists (use --force" in capsys.readouterr().err


def test_segment_with_a_run_and_the_hybrid(pacs_env, ct_dicom, tiny_bank, tiny_run, tmp_path, capsys):
    pacs_env.upload(write_series(ct_dicom, tmp_path / "series"))
    base = ["pacs", "segment", pacs_env.dicomweb, "--study", STUDY, "--device", "cpu", "--json"]
    assert run_cli([*base, "--run", str(tiny_run)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert (alone["method"], alone["stored"], alone["fetched"]) == ("fine-tuned SAM", True, 20)
    assert run_cli([*base, "--run", str(tiny_run), "--index", str(tiny_bank), "--sam2", "tiny", "--k", "2"]) == 0
    hybrid = json.loads(capsys.readouterr().out)
    assert (hybrid["method"], hybrid["stored"], hybrid["fetched"], hybrid["cached"]) == ("hybrid", True, 0, 20)
    assert hybrid["seg_series_uid"] != alone["seg_series_uid"]  # another model: another SEG series
    assert sorted(i["00080018"]["Value"][0] for i in _seg_items(pacs_env)) == \
        sorted([alone["seg_sop_uid"], hybrid["seg_sop_uid"]])


def test_add_support_grows_the_bank_and_the_next_segment_retrieves_it(pacs_env, ct_dicom, tiny_bank, tmp_path,
                                                                     capsys):
    import shutil

    from ragsam.data.dicom_seg import build_dicom_seg
    from ragsam.data.slices import volume_to_slices
    from ragsam.data.volume import read_image, read_labels
    from ragsam.retrieval.bank import SupportBank
    from ragsam.retrieval.bank_edit import list_additions
    from ragsam.retrieval.support_retrieval import retrieve_supports

    shutil.copytree(tiny_bank.parent, tmp_path / "bankroot")  # the bank and its prepared cache
    bank = tmp_path / "bankroot" / "bank"
    folder = write_series(ct_dicom, tmp_path / "series")
    pacs_env.upload(folder)
    # A radiologist's corrected segmentation, saved by the viewer as a SEG into the study
    image = read_image(folder)
    corrected = read_labels(ct_dicom["labels"], reference=image)
    seg = build_dicom_seg(corrected, folder, "btcv", algorithm="manual", model_key="reader-1")
    _client(pacs_env).store(seg, STUDY)
    before = len(SupportBank.load(bank))

    argv = ["pacs", "add-support", pacs_env.dicomweb, "--study", STUDY, "--seg", str(seg.SeriesInstanceUID),
            "--index", str(bank), "--by", "reader-1"]
    assert run_cli(argv) == 0
    assert "added added-0001:" in capsys.readouterr().out
    grown = SupportBank.load(bank)
    stack = volume_to_slices(image, corrected, grown.prepare_meta().slice_settings)
    labelled = [z for z in range(len(stack.labels)) if stack.labels[z].any()]
    (addition,) = list_additions(bank)
    assert addition.source_slices == labelled and len(grown) == before + len(labelled)
    assert addition.source == f"{pacs_env.dicomweb} study {STUDY} SEG {seg.SOPInstanceUID}"

    # the next segmentation of the series retrieves the corrected slices as their own best support
    hits = retrieve_supports(grown, grown.embedder(device="cpu"), stack.images, 1, [], None, 8)
    assert [(hits[z][0].case_id, hits[z][0].z) for z in labelled] == [("added-0001", i) for i in range(len(labelled))]
    assert np.array_equal(grown.support_slices([hits[labelled[0]][0]])[1][0], stack.labels[labelled[0]])

    assert run_cli(argv) == 2  # the same SEG twice: refused
    err = capsys.readouterr().err
    assert "already in the bank as added-0001" in err and err.count("\n") == 1
