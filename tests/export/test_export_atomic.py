"""Export replaces its target atomically: a killed or failed export leaves the previous artefact intact."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init RetinaNet (export needs no training when parity is not checked)."""
    from sfdeploy.checkpoint import save_checkpoint
    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model

    cfg = ModelConfig(detector="retinanet", backbone="resnet18", class_names=["a", "b"], min_size=128,
                      max_size=128, fpn_channels=64)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", build_model(cfg, load_backbone_weights=False),
                           cfg)


def test_export_killed_mid_write_keeps_the_old_artefact(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """SIGKILL while onnx.save has written half the new graph (what a killed `sfdeploy export` did to a 77 MB
    file): the old .onnx survives byte for byte, and the next export cleans the leftover and succeeds."""
    from sfdeploy.export.onnx import export_onnx, read_metadata

    out = tmp_path / "model.onnx"
    export_onnx(tiny_checkpoint, out, exporter="torchscript", verify=False)
    old = out.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    code = textwrap.dedent(f"""
        import sys, time, onnx
        def half_save(model, path, *a, **k):  # the kill lands in the middle of writing the graph
            data = model.SerializeToString()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
            print("WRITING", flush=True)
            time.sleep(120)
        onnx.save = onnx.save_model = half_save
        from sfdeploy.cli import main
        sys.exit(main(["export", {str(tiny_checkpoint)!r}, "--out", {str(out)!r}, "--exporter", "torchscript",
                       "--no-verify"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert line == "WRITING"
    assert out.read_bytes() == old  # not truncated, not replaced
    assert read_metadata(out)["detector"] == "retinanet"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "model.onnx")
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.onnx.")  # SIGKILL: no cleanup possible
    export_onnx(tiny_checkpoint, out, exporter="torchscript", verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the next export removed it


def test_export_failing_parity_keeps_the_old_artefact(tiny_checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import sfdeploy.export.onnx as eo
    from sfdeploy.export.verify import ParityError, ParityReport

    out = tmp_path / "model.onnx"
    import onnx

    eo.export_onnx(tiny_checkpoint, out, exporter="torchscript", verify=False)
    graph = onnx.load(str(out))
    graph.metadata_props.add(key="marker", value="the previous export")  # re-exporting would give equal bytes
    onnx.save(graph, str(out))
    old = out.read_bytes()
    monkeypatch.setattr(eo, "verify_onnx", lambda path, *a, **k: ParityReport(str(path), {}, []))  # never passes
    with pytest.raises(ParityError) as info:
        eo.export_onnx(tiny_checkpoint, out, exporter="torchscript")
    assert out.read_bytes() == old
    failed = tmp_path / "model.onnx.parity-failed"  # kept for inspection, not picked up as a model by *.onnx
    assert info.value.report.artefact == str(failed) and str(failed) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.parity-failed"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_triton_repository_rewrite_failing_mid_copy_keeps_the_served_model(tiny_checkpoint: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton polls its repository: a rewrite that dies while copying must not leave it half a model."""
    import shutil

    import sfdeploy.export.triton as et
    from sfdeploy.export.onnx import export_onnx

    graph = export_onnx(tiny_checkpoint, tmp_path / "m.onnx", exporter="torchscript", verify=False).path
    model_dir = et.write_triton_repository(graph, tmp_path / "repo", model_name="m")
    served = model_dir / "1" / "model.onnx"
    before = served.read_bytes()
    assert stat.S_IMODE(served.stat().st_mode) == 0o666 & ~_umask()

    def dying_copy(src, dst, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfile", dying_copy)
    with pytest.raises(OSError, match="disk full"):
        et.write_triton_repository(graph, tmp_path / "repo", model_name="m")
    assert served.read_bytes() == before
    assert sorted(p.name for p in served.parent.iterdir()) == ["model.onnx"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]  # no half-written version 2
    assert "versions: [ 1 ]" in (model_dir / "config.pbtxt").read_text()  # still serves version 1


def test_sigterm_during_export_leaves_no_temp_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`kill PID` (SIGTERM, as docker stop / systemd send) mid-write unwinds like Ctrl-C: exit 130, the old
    artefact intact and no temporary file left behind."""
    from sfdeploy.export.onnx import export_onnx

    out = tmp_path / "model.onnx"
    export_onnx(tiny_checkpoint, out, exporter="torchscript", verify=False)
    old = out.read_bytes()
    code = textwrap.dedent(f"""
        import sys, time, onnx
        def slow_save(model, path, *a, **k):
            with open(path, "wb") as fh:
                fh.write(b"half a graph")
            print("WRITING", flush=True)
            time.sleep(120)
        onnx.save = onnx.save_model = slow_save
        from sfdeploy.cli import main
        sys.exit(main(["export", {str(tiny_checkpoint)!r}, "--out", {str(out)!r}, "--exporter", "torchscript",
                       "--no-verify"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_killed_int8_export_leaves_nothing_after_the_next_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """SIGKILL while ONNX Runtime's quantizer writes into its staging folder next to the output: the folder stays
    (no cleanup possible), and the next quantization to that output removes it and nothing else."""
    from sfdeploy.export.onnx import export_onnx
    from sfdeploy.export.quantize import quantize_int8

    fp32 = export_onnx(tiny_checkpoint, tmp_path / "src" / "m.fp32.onnx", exporter="torchscript", verify=False).path
    folder = tmp_path / "out"
    folder.mkdir()
    unrelated = [folder / "other.onnx", folder / ".notes", folder / ".quant-notes.txt"]
    for p in unrelated:
        p.write_text("keep me")
    out = folder / "model.int8.onnx"
    code = textwrap.dedent(f"""
        import sys, time, numpy as np, onnxruntime.quantization as oq
        def killed_quantize(model, path, *a, **k):  # the kill lands while ORT writes the quantized graph
            with open(path, "wb") as fh:
                fh.write(b"half a graph")
            print("WRITING", file=sys.__stdout__, flush=True)  # quantize_int8 redirects sys.stdout
            time.sleep(120)
        oq.quantize_static = killed_quantize
        from sfdeploy.export.quantize import quantize_int8
        quantize_int8({str(fp32)!r}, {str(out)!r}, [np.zeros((1, 3, 128, 128), np.float32)])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert line == "WRITING"
    leftovers = sorted(set(folder.iterdir()) - set(unrelated))
    assert len(leftovers) == 1 and leftovers[0].is_dir()  # the killed run's staging folder
    rng = np.random.default_rng(0)
    quantize_int8(fp32, out, [rng.random((1, 3, 128, 128), dtype=np.float32)], method="minmax")
    assert sorted(folder.iterdir()) == sorted(unrelated + [out])
    assert all(p.read_text() == "keep me" for p in unrelated)


def test_killed_int8_export_leaves_only_what_the_next_one_cleans(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """SIGKILL while ORT calibrates during `export --int8`: no fp32 intermediate next to the output (a user's own
    `model.fp32.onnx` there is not touched) and no `ort.quant.*` folder in the system temp dir: only hidden staging
    folders, which the next export removes."""
    from test_export_deploy import run_cli

    folder, system_tmp = tmp_path / "out", tmp_path / "system-tmp"
    folder.mkdir()
    system_tmp.mkdir()
    out, own = folder / "model.onnx", folder / "model.fp32.onnx"
    out.write_bytes(b"the previous export")
    own.write_bytes(b"the user's fp32 export")
    argv = ["export", str(tiny_checkpoint), "--out", str(out), "--exporter", "torchscript", "--int8", "--calib-data",
            "synthetic:2", "--calib-images", "1", "--no-verify"]
    code = textwrap.dedent(f"""
        import sys, time
        import sfdeploy.export.quantize as q
        def stuck(self):  # the kill lands while ORT's calibrator reads the images, inside its temp folder
            print("CALIBRATING", file=sys.__stdout__, flush=True)  # quantize_int8 redirects sys.stdout
            time.sleep(120)
        q._Reader.get_next = stuck
        from sfdeploy.cli import main
        sys.exit(main({argv!r}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(system_tmp)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert line == "CALIBRATING"
    assert not [p.name for p in system_tmp.iterdir() if p.name.startswith("ort.quant.")]
    assert out.read_bytes() == b"the previous export" and own.read_bytes() == b"the user's fp32 export"
    hidden = [p for p in folder.iterdir() if p not in (out, own)]
    assert hidden and all(p.name.startswith(".model.onnx.") and p.is_dir() for p in hidden)  # SIGKILL: no cleanup
    assert run_cli(argv) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["model.fp32.onnx", "model.onnx"]
    assert own.read_bytes() == b"the user's fp32 export"


def test_legacy_quant_staging_goes_only_when_unambiguous_and_old(tmp_path: Path) -> None:
    """`.quant-XXXXXXXX` folders of older versions carry no pid or lock: only tempfile's name, holding only the files
    those versions wrote, untouched for an hour, is removed."""
    from sfdeploy.export.quantize import LEGACY_STAGING_MIN_AGE_S, remove_legacy_staging

    def make(name: str, files: tuple[str, ...], age: float) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"x")
        for p in [*d.iterdir(), d]:
            t = p.stat().st_mtime - age
            os.utime(p, (t, t))
        return d

    old = LEGACY_STAGING_MIN_AGE_S + 60
    gone = [make(".quant-k2j_x9ab", ("model.int8.onnx", "final.onnx"), old), make(".quant-abcdefgh", (), old)]
    kept = [make(".quant-0123abcd", ("model.int8.onnx",), 60),  # recent: maybe a live older version
            make(".quant-notmine1", ("model.int8.onnx", "notes.txt"), old),  # holds something else
            make(".quant-toolongname", ("final.onnx",), old), make("quant-abcdefgh", ("final.onnx",), old)]
    assert sorted(remove_legacy_staging(tmp_path)) == sorted(gone)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_triton_export_failing_parity_leaves_the_repository_as_it_was(tiny_checkpoint: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton loads every folder of its repository: a failed export must not leave a staging folder (or anything)
    in it; the failed graph is kept next to the repository; a later export works and clears an old `_staging`."""
    import sfdeploy.export.onnx as eo
    from sfdeploy.export.verify import ParityReport
    from test_export_deploy import run_cli

    repo = tmp_path / "repo"
    base = ["export", str(tiny_checkpoint), "--format", "triton", "--exporter", "torchscript"]
    assert run_cli(base + ["--out", str(repo), "--model-name", "served", "--no-verify"]) == 0
    before = _tree(repo)
    monkeypatch.setattr(eo, "verify_onnx", lambda path, *a, **k: ParityReport(str(path), {}, []))  # never passes
    assert run_cli(base + ["--out", str(repo), "--model-name", "new"]) == 1
    assert _tree(repo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "repo.parity-failed"]  # no staging folder either
    assert run_cli(base + ["--out", str(tmp_path / "fresh")]) == 1
    assert not (tmp_path / "fresh").exists()
    monkeypatch.chdir(repo)
    assert run_cli(base + ["--out", ".", "--model-name", "new"]) == 1  # the repository as `.`: staged beside it too
    assert _tree(repo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.parity-failed", "repo", "repo.parity-failed"]
    monkeypatch.undo()
    (repo / "_staging").mkdir()  # what a failed export of an older version left
    (repo / "_staging" / "model.onnx").write_bytes(b"graph")
    assert run_cli(base + ["--out", str(repo), "--model-name", "new", "--no-verify"]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["new", "served"]
    assert sorted(p.name for p in (repo / "new").iterdir()) == ["1", "config.pbtxt"]


def test_int8_export_failing_fp32_parity_keeps_the_graph_beside_the_output(tiny_checkpoint: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp32 intermediate of `--int8` is staged in a folder that is deleted: a graph failing parity is still kept
    for inspection, as `<stem>.fp32.onnx.parity-failed` beside the output, and the output stays as it was."""
    import sfdeploy.export.onnx as eo
    from sfdeploy.export.verify import ParityReport
    from test_export_deploy import run_cli

    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous export")
    monkeypatch.setattr(eo, "verify_onnx", lambda path, *a, **k: ParityReport(str(path), {}, []))  # never passes
    assert run_cli(["export", str(tiny_checkpoint), "--out", str(out), "--exporter", "torchscript", "--int8",
                    "--calib-data", "synthetic:2"]) == 1
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx.parity-failed", "model.onnx"]
    assert eo.read_metadata(tmp_path / "model.fp32.onnx.parity-failed")["detector"] == "retinanet"
