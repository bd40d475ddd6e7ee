"""Every bad input we know of, through the command line: exit code 2, one stderr line naming the
file, and nothing left behind.

One parametrised test over :data:`CASES`. A case builds its bad input in the test's own folder
from small valid ones (a 2-case phantom dataset, its prepared cache, a 1-iteration tiny run and
a tiny support bank, built once per module) and returns the command line, the text the error
line must contain (the file's name) and the output path that must not exist afterwards.

Add a case for every new defect found: append ``Case("id", builder)`` below.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ragsam.cli.main import run_cli

TINY_TRAIN = ["model.image_size=32", "optim.max_iterations=1", "optim.warmup=0", "optim.batch_size=2",
              "log.tensorboard=false", "log.progress=false", "device=cpu", "val.every=0"]


@dataclass
class Base:
    """The valid inputs the bad ones are made from (read-only: cases copy what they damage)."""

    data: Path
    image: Path
    labels: Path
    prepared: Path
    run: Path
    bank: Path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("malformed-base")
    data, prepared, run, bank = root / "data", root / "prep", root / "run", root / "bank"
    assert run_cli(["phantom", str(data), "--cases", "2", "--shape", "6,32,32"]) == 0
    assert run_cli(["prepare", str(data), "-o", str(prepared), "--size", "32", "--split", "none"]) == 0
    assert run_cli(["train", "--config", "tiny", "-p", str(prepared), "-o", str(run), *TINY_TRAIN]) == 0
    assert run_cli(["index", "build", str(prepared), "-o", str(bank), "--embedder", "tiny",
                    "--image-size", "28", "--device", "cpu"]) == 0
    torch.set_num_threads(threads)
    return Base(data, data / "img" / "img0001.nii.gz", data / "label" / "label0001.nii.gz", prepared, run, bank)


# -- bad files -------------------------------------------------------------------------------------

def _write(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _ct(dtype=np.float32) -> np.ndarray:
    return np.full((6, 32, 32), -100, dtype)


def nan_nifti(d: Path) -> Path:
    a = _ct()
    a[2, 3, 4] = np.nan
    return _write(a, d / "nan.nii.gz")


def inf_nifti(d: Path) -> Path:
    a = _ct(np.float64)
    a[0, 0, 0] = -np.inf
    return _write(a, d / "inf.nii")


def nan_mha(d: Path) -> Path:
    a = _ct()
    a[5, 31, 31] = np.nan
    return _write(a, d / "nan.mha")


def inf_nrrd(d: Path) -> Path:
    a = _ct()
    a[1, 1, 1] = np.inf
    return _write(a, d / "inf.nrrd")


def _patch_pixdim(d: Path, name: str, value: float) -> Path:
    import struct

    raw = bytearray(_write(_ct(np.int16), d / "ok.nii").read_bytes())
    pix = list(struct.unpack("<8f", raw[76:108]))
    pix[3] = value
    raw[76:108] = struct.pack("<8f", *pix)
    (d / name).write_bytes(bytes(raw))
    return d / name


def zero_spacing_nifti(d: Path) -> Path:
    return _patch_pixdim(d, "zero-spacing.nii", 0.0)


def negative_spacing_nifti(d: Path) -> Path:
    return _patch_pixdim(d, "negative-spacing.nii", -3.0)


def _patch_mha(d: Path, name: str, key: bytes, line: bytes, prefix: bytes = b"") -> Path:
    raw = _write(_ct(np.int16), d / "ok.mha").read_bytes()
    i = raw.index(key)
    j = raw.index(b"\n", i)
    (d / name).write_bytes(prefix + raw[:i] + line + raw[j:])
    return d / name


def zero_spacing_mha(d: Path) -> Path:
    return _patch_mha(d, "zero-spacing.mha", b"ElementSpacing", b"ElementSpacing = 1 0 1")


def negative_spacing_mha(d: Path) -> Path:
    return _patch_mha(d, "negative-spacing.mha", b"ElementSpacing", b"ElementSpacing = 1 1 -2")


def huge_mha(d: Path) -> Path:
    return _patch_mha(d, "huge.mha", b"DimSize", b"DimSize = 100000 100000 100000")


def long_header_mha(d: Path) -> Path:
    return _patch_mha(d, "long-header.mha", b"DimSize", b"DimSize = 32 32 6",
                      prefix=b"ObjectType = Image\nNDims = 3\nComment = " + b"x" * 100_000 + b"\n")


def truncated_nifti(d: Path) -> Path:
    raw = _write(_ct(np.int16), d / "ok.nii").read_bytes()
    (d / "truncated.nii").write_bytes(raw[: len(raw) // 2])
    return d / "truncated.nii"


def empty_file(d: Path) -> Path:
    (d / "empty.nii.gz").write_bytes(b"")
    return d / "empty.nii.gz"


def text_file(d: Path) -> Path:
    (d / "notes.nii.gz").write_text("not an image\n")
    return d / "notes.nii.gz"


def two_d_image(d: Path) -> Path:
    return _write(np.zeros((32, 32), np.int16), d / "flat.nii.gz", spacing=(1.0, 1.0))


def vector_image(d: Path) -> Path:
    image = sitk.GetImageFromArray(np.zeros((6, 32, 32, 3), np.int16), isVector=True)
    sitk.WriteImage(image, str(d / "rgb.mha"))
    return d / "rgb.mha"


def missing_file(d: Path) -> Path:
    return d / "no-such-scan.nii.gz"


BAD_IMAGES: dict[str, Callable[[Path], Path]] = {f.__name__: f for f in (
    nan_nifti, inf_nifti, nan_mha, inf_nrrd, zero_spacing_nifti, negative_spacing_nifti, zero_spacing_mha,
    negative_spacing_mha, huge_mha, long_header_mha, truncated_nifti, empty_file, text_file, two_d_image,
    vector_image, missing_file)}

#: A smaller set for the commands whose image reading is the same function as predict's.
SOME_BAD_IMAGES = ("nan_nifti", "nan_mha", "zero_spacing_nifti", "negative_spacing_mha", "huge_mha",
                   "truncated_nifti")


def nan_labels_nifti(d: Path) -> Path:
    a = np.ones((6, 32, 32), np.float32)
    a[3, 3, 3] = np.nan
    return _write(a, d / "nan-labels.nii.gz")


def nan_labels_mha(d: Path) -> Path:
    a = np.ones((6, 32, 32), np.float32)
    a[0, 0, 0] = np.nan
    return _write(a, d / "nan-labels.mha")


def negative_labels(d: Path) -> Path:
    return _write(np.full((6, 32, 32), -1, np.int16), d / "negative-labels.nii.gz")


def fractional_labels(d: Path) -> Path:
    return _write(np.full((6, 32, 32), 1.5, np.float32), d / "fractional-labels.nii.gz")


BAD_LABELS = {f.__name__: f for f in (nan_labels_nifti, nan_labels_mha, negative_labels, fractional_labels)}


def constant_image(d: Path) -> Path:
    return _write(np.zeros((6, 32, 32), np.int16), d / "constant.nii.gz")


def normalised_image(d: Path) -> Path:
    return _write(np.random.default_rng(0).random((6, 32, 32), dtype=np.float32), d / "normalised.nii.gz")


#: Readable files that are not CT in HU: every command that reads a scan gives the same answer.
NOT_CT = {f.__name__: f for f in (constant_image, normalised_image)}


# -- cases -------------------------------------------------------------------------------------------

#: A refused ``prepare`` into a new folder leaves nothing (the output lifecycle of #16).
PREPARE_LEFTOVER = True

Builder = Callable[[Base, Path], tuple[list[str], str, Path | None]]


@dataclass(frozen=True)
class Case:
    id: str
    build: Builder


def _dataset_with(base: Base, d: Path, image=None, labels=None) -> Path:
    """A copy of the phantom dataset whose case 0002 image and/or labels are replaced."""
    data = d / "dataset"
    shutil.copytree(base.data, data)
    if image is not None:
        bad = image(d)
        (data / "img" / "img0002.nii.gz").unlink()
        shutil.copy2(bad, data / "img" / ("img0002" + "".join(bad.suffixes)))
    if labels is not None:
        bad = labels(d)
        (data / "label" / "label0002.nii.gz").unlink()
        shutil.copy2(bad, data / "label" / ("label0002" + "".join(bad.suffixes)))
    return data


def _image_cases() -> list[Case]:
    cases = []
    for name, make in BAD_IMAGES.items():
        cases.append(Case(f"predict-{name}", lambda b, d, make=make: (
            ["predict", str(b.run), str(make(d)), "-o", str(d / "out"), "--device", "cpu"], make(d).name, d / "out")))
        cases.append(Case(f"segment-{name}", lambda b, d, make=make: (
            ["segment", str(make(d)), "-o", str(d / "out.nii.gz"), "--index", str(b.bank), "--sam2", "tiny",
             "--device", "cpu"], make(d).name, d / "out.nii.gz")))
    for name in SOME_BAD_IMAGES:
        make = BAD_IMAGES[name]
        cases.append(Case(f"index-query-{name}", lambda b, d, make=make: (
            ["index", "query", str(b.bank), "--image", str(make(d)), "--z", "0", "--device", "cpu"],
            make(d).name, None)))
        cases.append(Case(f"evaluate-images-{name}", lambda b, d, make=make: (
            ["evaluate", "-p", str(b.labels), "-g", str(b.labels), "--images", str(make(d)), "-o", str(d / "ev")],
            make(d).name, d / "ev")))
        cases.append(Case(f"prepare-image-{name}", lambda b, d, make=make: (
            ["prepare", str(_dataset_with(b, d, image=make)), "-o", str(d / "prep"), "--size", "32"],
            "img0002", d / "prep" if PREPARE_LEFTOVER else None)))
        cases.append(Case(f"baseline-{name}", lambda b, d, make=make: (
            ["baseline", str(make(d)), "--gt", str(b.labels), "-o", str(d / "bl"), "--prompt", "box",
             "--weights", "random", "--arch", "tiny", "--device", "cpu"], make(d).name, d / "bl")))
    for name, make in NOT_CT.items():
        cases.append(Case(f"predict-{name}", lambda b, d, make=make: (
            ["predict", str(b.run), str(make(d)), "-o", str(d / "out"), "--device", "cpu"], make(d).name, d / "out")))
        cases.append(Case(f"segment-{name}", lambda b, d, make=make: (
            ["segment", str(make(d)), "-o", str(d / "out.nii.gz"), "--index", str(b.bank), "--sam2", "tiny",
             "--device", "cpu"], make(d).name, d / "out.nii.gz")))
        cases.append(Case(f"index-query-{name}", lambda b, d, make=make: (
            ["index", "query", str(b.bank), "--image", str(make(d)), "--z", "0", "--device", "cpu"],
            make(d).name, None)))
        cases.append(Case(f"prepare-image-{name}", lambda b, d, make=make: (
            ["prepare", str(_dataset_with(b, d, image=make)), "-o", str(d / "prep"), "--size", "32"],
            "img0002", d / "prep")))
    for name, make in BAD_LABELS.items():
        cases.append(Case(f"evaluate-gt-{name}", lambda b, d, make=make: (
            ["evaluate", "-p", str(b.labels), "-g", str(make(d)), "-o", str(d / "ev")], make(d).name, d / "ev")))
        cases.append(Case(f"evaluate-pred-{name}", lambda b, d, make=make: (
            ["evaluate", "-p", str(make(d)), "-g", str(b.labels), "-o", str(d / "ev")], make(d).name, d / "ev")))
        cases.append(Case(f"prepare-labels-{name}", lambda b, d, make=make: (
            ["prepare", str(_dataset_with(b, d, labels=make)), "-o", str(d / "prep"), "--size", "32"],
            "label0002", d / "prep" if PREPARE_LEFTOVER else None)))
    return cases


def _under_a_file(d: Path) -> Path:
    (d / "plain.txt").write_text("a file\n")
    return d / "plain.txt" / "out"


def _output_cases() -> list[Case]:
    return [
        Case("prepare-output-under-a-file", lambda b, d: (
            ["prepare", str(b.data), "-o", str(_under_a_file(d)), "--size", "32"], "plain.txt", None)),
        Case("evaluate-output-under-a-file", lambda b, d: (
            ["evaluate", "-p", str(b.labels), "-g", str(b.labels), "-o", str(_under_a_file(d))], "plain.txt", None)),
        Case("train-output-under-a-file", lambda b, d: (
            ["train", "--config", "tiny", "-p", str(b.prepared), "-o", str(_under_a_file(d)), *TINY_TRAIN],
            "plain.txt", None)),
        Case("index-build-output-under-a-file", lambda b, d: (
            ["index", "build", str(b.prepared), "-o", str(_under_a_file(d)), "--embedder", "tiny",
             "--image-size", "28", "--device", "cpu"], "plain.txt", None)),
        Case("segment-output-under-a-file", lambda b, d: (
            ["segment", str(b.image), "-o", str(_under_a_file(d) / "x.nii.gz"), "--index", str(b.bank),
             "--sam2", "tiny", "--device", "cpu"], "plain.txt", None)),
        Case("predict-output-under-a-file", lambda b, d: (
            ["predict", str(b.run), str(b.image), "-o", str(_under_a_file(d)), "--device", "cpu"], "plain.txt", None)),
        Case("merge-output-under-a-file", lambda b, d: (
            ["merge", str(b.run), "-o", str(_under_a_file(d))], "plain.txt", None)),
        Case("phantom-output-under-a-file", lambda b, d: (
            ["phantom", str(_under_a_file(d)), "--cases", "1", "--shape", "4,8,8"], "plain.txt", None)),
        Case("phantom-huge-shape", lambda b, d: (
            ["phantom", str(d / "ph"), "--shape", "100000,100000,100000"], "100000x100000x100000", d / "ph")),
        Case("phantom-zero-shape", lambda b, d: (
            ["phantom", str(d / "ph"), "--shape", "0,8,8"], "shape", d / "ph")),
        Case("phantom-nan-spacing", lambda b, d: (
            ["phantom", str(d / "ph"), "--spacing", "nan,1,1"], "spacing", d / "ph")),
    ]


def _yaml(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def _train(b: Base, d: Path, *extra: str, config: str = "tiny") -> list[str]:
    return ["train", "--config", config, "-p", str(b.prepared), "-o", str(d / "run"), *TINY_TRAIN, *extra]


def _config_cases() -> list[Case]:
    overrides = {
        "lr-inf": "optim.lr=.inf", "lr-nan": "optim.lr=.nan", "dice-weight-nan": "optim.dice_weight=.nan",
        "betas-out-of-range": "optim.betas=[2,3]", "weight-decay-negative": "optim.weight_decay=-1",
        "max-iterations-bool": "optim.max_iterations=true", "grad-clip-inf": "optim.grad_clip=.inf",
        "unknown-key": "optim.speed=9", "not-key-value": "optim.lr",
    }
    cases = [Case(f"train-override-{k}", lambda b, d, v=v: (_train(b, d, v), "<command line>", d / "run"))
             for k, v in overrides.items()]
    cases += [
        Case("train-config-is-a-folder", lambda b, d: (_train(b, d, config=str(d)), d.name, d / "run")),
        Case("train-config-integer-key", lambda b, d: (
            _train(b, d, config=str(_yaml(d, "c.yaml", "optim:\n  5: 1\n"))), "c.yaml", d / "run")),
        Case("train-config-not-yaml", lambda b, d: (
            _train(b, d, config=str(_yaml(d, "c.yaml", "optim: [\n"))), "c.yaml", d / "run")),
        Case("train-config-a-list", lambda b, d: (
            _train(b, d, config=str(_yaml(d, "c.yaml", "- 1\n- 2\n"))), "c.yaml", d / "run")),
        Case("train-config-missing", lambda b, d: (
            _train(b, d, config=str(d / "none.yaml")), "none.yaml", d / "run")),
        Case("train-unknown-preset", lambda b, d: (_train(b, d, config="samedd"), "samedd", d / "run")),
        Case("experiment-variants-not-a-list", lambda b, d: (
            ["experiment", str(_yaml(d, "plan.yaml", "name: p\ntitle: t\ndataset: btcv\nvariants: 5\n")),
             "--data", str(b.data), "-o", str(d / "exp")], "plan.yaml", d / "exp")),
        Case("experiment-variant-unknown-key", lambda b, d: (
            ["experiment", str(_yaml(d, "plan.yaml", "name: p\ntitle: t\ndataset: btcv\n"
                                                     "variants:\n  - {name: a, colour: red}\n")),
             "--data", str(b.data), "-o", str(d / "exp")], "plan.yaml", d / "exp")),
    ]
    return cases


def _label_map(d: Path, text: str) -> Path:
    (d / "map.json").write_text(text)
    return d / "map.json"


def _label_map_cases() -> list[Case]:
    texts = {
        "duplicate-key": '{"labels": {"0": "background", "1": "spleen", "1": "liver"}}',
        "source-label-map-list": '{"labels": {"0": "background", "1": "spleen"}, "source_label_map": [1, 2]}',
        "non-integer-key": '{"labels": {"0": "background", "one": "spleen"}}',
        "no-background": '{"labels": {"1": "spleen"}}',
        "not-json": '{"labels": ',
        "name-not-a-string": '{"labels": {"0": "background", "1": 7}}',
    }
    cases = []
    for key, text in texts.items():
        cases.append(Case(f"prepare-label-map-{key}", lambda b, d, t=text: (
            ["prepare", str(b.data), "-o", str(d / "prep"), "--labels", str(_label_map(d, t))], "map.json",
            d / "prep")))
        cases.append(Case(f"evaluate-label-map-{key}", lambda b, d, t=text: (
            ["evaluate", "-p", str(b.labels), "-g", str(b.labels), "--labels", str(_label_map(d, t)),
             "-o", str(d / "ev")], "map.json", d / "ev")))
    return cases


def _copy(src: Path, d: Path) -> Path:
    shutil.copytree(src, d / src.name)
    return d / src.name


def _edit_manifest(prep: Path, column: str, value: str) -> Path:
    import csv

    path = prep / "manifest.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0][column] = value
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return prep


def _corrupt_cache(b: Base, d: Path, kind: str) -> Path:
    prep = _copy(b.prepared, d)
    if kind == "z-out-of-range":
        _edit_manifest(prep, "z", "99")
    elif kind == "label-200":
        labels = np.load(prep / "cases" / "0001" / "label.npy")
        labels[0, 0, 0] = 200
        np.save(prep / "cases" / "0001" / "label.npy", labels)
    elif kind == "image-wrong-shape":
        np.save(prep / "cases" / "0001" / "image.npy", np.zeros((2, 8, 8), np.float32))
    elif kind == "label-map-key":
        (prep / "label_map.json").write_text('{"labels": {"0": "background", "x": "spleen"}}')
    elif kind == "missing-image":
        (prep / "cases" / "0001" / "image.npy").unlink()
    elif kind == "manifest-unknown-case":
        _edit_manifest(prep, "case_id", "9999")
    return prep


CACHE_FILES = {"z-out-of-range": "manifest.csv", "label-200": "label.npy", "image-wrong-shape": "image.npy",
               "label-map-key": "label_map.json", "missing-image": "image.npy", "manifest-unknown-case": "9999"}


def _corrupt_bank(b: Base, d: Path, kind: str) -> Path:
    bank = _copy(b.bank, d)
    if kind == "bank-json-list":
        (bank / "bank.json").write_text("[1, 2]")
    elif kind == "metadata-z-999":
        lines = (bank / "metadata.csv").read_text().splitlines()
        header = lines[0].split(",")
        cells = lines[1].split(",")
        cells[header.index("z")] = "999"
        lines[1] = ",".join(cells)
        (bank / "metadata.csv").write_text("\n".join(lines) + "\n")
    elif kind == "index-missing":
        (bank / "index.faiss").unlink()
    return bank


BANK_FILES = {"bank-json-list": "bank.json", "metadata-z-999": "metadata.csv", "index-missing": "index.faiss"}


def _cache_and_bank_cases() -> list[Case]:
    cases = []
    for kind, named in CACHE_FILES.items():
        cases.append(Case(f"train-cache-{kind}", lambda b, d, k=kind, n=named: (
            ["train", "--config", "tiny", "-p", str(_corrupt_cache(b, d, k)), "-o", str(d / "run"), *TINY_TRAIN],
            n, d / "run")))
        cases.append(Case(f"index-build-cache-{kind}", lambda b, d, k=kind, n=named: (
            ["index", "build", str(_corrupt_cache(b, d, k)), "-o", str(d / "bank"), "--embedder", "tiny",
             "--image-size", "28", "--device", "cpu"], n, d / "bank")))
    for kind, named in BANK_FILES.items():
        cases.append(Case(f"index-query-{kind}", lambda b, d, k=kind, n=named: (
            ["index", "query", str(_corrupt_bank(b, d, k)), "--case", "0001", "--z", "1", "--device", "cpu",
             "--prepared", str(b.prepared)], n, None)))
        cases.append(Case(f"segment-{kind}", lambda b, d, k=kind, n=named: (
            ["segment", str(b.image), "-o", str(d / "out.nii.gz"), "--index", str(_corrupt_bank(b, d, k)),
             "--sam2", "tiny", "--device", "cpu"], n, d / "out.nii.gz")))
    return cases


def _weights_cases() -> list[Case]:
    def one_tensor(d: Path) -> Path:
        from safetensors.torch import save_file

        folder = d / "sam2"
        folder.mkdir()
        save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text('{"model_type": "sam2_video"}')
        return folder

    def dinov2_folder(d: Path, config: str, pickled: bool = False) -> Path:
        folder = d / "dino"
        folder.mkdir()
        (folder / "config.json").write_text(config)
        if pickled:
            torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
        return folder

    return [
        Case("weights-verify-one-tensor", lambda b, d: (
            ["weights", "verify", str(one_tensor(d)), "sam2.1-tiny"], "sam2", None)),
        Case("segment-sam2-incomplete-folder", lambda b, d: (
            ["segment", str(b.image), "-o", str(d / "out.nii.gz"), "--index", str(b.bank),
             "--sam2", str(one_tensor(d)), "--device", "cpu"], "sam2", d / "out.nii.gz")),
        Case("segment-sam2-unknown-hub-id", lambda b, d: (
            ["segment", str(b.image), "-o", str(d / "out.nii.gz"), "--index", str(b.bank),
             "--sam2", "nobody/no-such-model-xyz", "--device", "cpu"], "nobody/no-such-model-xyz",
            d / "out.nii.gz")),
        Case("index-build-dinov2-unknown-model-type", lambda b, d: (
            ["index", "build", str(b.prepared), "-o", str(d / "bank"), "--device", "cpu",
             "--embedder", str(dinov2_folder(d, '{"model_type": "gpt2"}'))], "dino", d / "bank")),
        Case("index-build-dinov2-pickled-bin", lambda b, d: (
            ["index", "build", str(b.prepared), "-o", str(d / "bank"), "--device", "cpu",
             "--embedder", str(dinov2_folder(d, '{"model_type": "dinov2", "hidden_size": 32}', pickled=True))],
            "dino", d / "bank")),
        Case("predict-run-missing", lambda b, d: (
            ["predict", str(d / "norun"), str(b.image), "-o", str(d / "out")], "norun", d / "out")),
        Case("merge-run-not-a-run", lambda b, d: (
            ["merge", str(b.data), "-o", str(d / "merged")], b.data.name, d / "merged")),
    ]


def _seg_cases() -> list[Case]:
    """``--output-format dicom-seg|both``: inputs a DICOM SEG cannot reference (refused before any model)."""
    shared = Path(__file__).resolve().parents[1] / "assets" / "real-ct" / "abdomen-ct-dicom" / "dicom"
    cases = []
    for fmt in ("dicom-seg", "both"):
        cases += [
            Case(f"predict-{fmt}-nifti-input", lambda b, d, f=fmt: (
                ["predict", str(b.run), str(b.image), "-o", str(d / "out"), "--output-format", f, "--device", "cpu"],
                b.image.name, d / "out")),
            Case(f"segment-{fmt}-nifti-input", lambda b, d, f=fmt: (
                ["segment", str(b.image), "-o", str(d / "out"), "--index", str(b.bank), "--sam2", "tiny",
                 "--output-format", f, "--device", "cpu"], b.image.name, d / "out")),
            Case(f"predict-{fmt}-series-without-uids", lambda b, d, f=fmt: (  # the anonymised shared series
                ["predict", str(b.run), str(shared), "-o", str(d / "out"), "--output-format", f, "--device", "cpu"],
                "no StudyInstanceUID", d / "out")),
            Case(f"segment-{fmt}-series-without-uids", lambda b, d, f=fmt: (
                ["segment", str(shared), "-o", str(d / "out"), "--index", str(b.bank), "--sam2", "tiny",
                 "--output-format", f, "--device", "cpu"], "no StudyInstanceUID", d / "out")),
        ]
    cases.append(Case("predict-unknown-output-format", lambda b, d: (
        ["predict", str(b.run), str(b.image), "-o", str(d / "out"), "--output-format", "rtstruct"], "rtstruct",
        d / "out")))
    return cases


CASES: list[Case] = (_image_cases() + _output_cases() + _config_cases() + _label_map_cases()
                     + _cache_and_bank_cases() + _weights_cases() + _seg_cases())


def test_the_suite_is_large():
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line(case: Case, base: Base, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    # huggingface_hub reads the variable once, at import: without this an unknown Hub id waits for the
    # network to time out (about 45 s) before it is refused
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("COLUMNS", "200")
    argv, named, leftover = case.build(base, tmp_path)
    capsys.readouterr()
    code = run_cli(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {err}"
    assert len(lines) == 1 and lines[0].startswith("ragsam: error: "), err
    assert named in lines[0], f"{named!r} not named in: {lines[0]}"
    if leftover is not None:
        assert not leftover.exists(), f"{leftover} left behind"
