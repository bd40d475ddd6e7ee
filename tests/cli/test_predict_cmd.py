"""``ragsam predict`` on the command line."""

from __future__ import annotations

from ragsam.cli.main import run_cli


def test_predict_cli(tmp_path, capsys):
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings
    from ragsam.data.volume import read_image, read_labels

    write_phantom_dataset(tmp_path / "src", n_cases=1, shape=(4, 32, 32), seed=5)
    prepare_dataset(tmp_path / "src", tmp_path / "prep", PrepareOptions(settings=SliceSettings(size=32), split="none"))
    run = tmp_path / "run"
    assert run_cli(["train", "--config", "tiny", "--prepared", str(tmp_path / "prep"), "--out", str(run),
                    "model.image_size=32", "optim.max_iterations=1", "log.tensorboard=false", "device=cpu"]) == 0
    capsys.readouterr()
    image = tmp_path / "src" / "img" / "img0001.nii.gz"
    out = tmp_path / "pred"
    argv = ["predict", str(run), str(image), "-o", str(out), "--batch-size", "3", "--device", "cpu"]
    assert run_cli(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"0001: {out / '0001.nii.gz'} (4 slices, organs ")
    assert read_labels(out / "0001.nii.gz").geometry.size == read_image(image).geometry.size
    assert run_cli(argv) == 0  # same input and run: already done
    assert capsys.readouterr().out.strip() == f"0001: {out / '0001.nii.gz'} (already done, skipped)"
    (out / "0001.nii.gz").write_bytes(b"someone else's file")
    assert run_cli(argv) == 2
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    assert run_cli([*argv, "--force"]) == 0
    capsys.readouterr()
    assert run_cli(["predict", str(tmp_path), str(image), "-o", str(out)]) == 2
    assert "not a ragsam run folder" in capsys.readouterr().err
    assert run_cli(["predict", str(run), str(tmp_path / "nope.nii.gz"), "-o", str(out)]) == 2
    assert run_cli(["predict", str(run), str(image), "-o", str(out), "--batch-size", "0"]) == 2
