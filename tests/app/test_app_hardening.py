"""The demo is no way around the service's limits: uploads (inline data: URLs included) are size-checked before
decoding with the HTTP service's caps and leave no temp files, gradio's cache is cleaned, and only what the page
shows can be called (training only when the operator enabled it)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")
pytest.importorskip("sfdeploy.serving")

from sfdeploy.app import inputs  # noqa: E402
from sfdeploy.app.inputs import (MAX_PIXELS, MAX_UPLOAD_BYTES, BadImage, load_input,  # noqa: E402
                                 raw_upload_path)
from sfdeploy.app.launch import launch  # noqa: E402
from sfdeploy.app.store import ModelStore  # noqa: E402
from sfdeploy.app.ui import build_app  # noqa: E402


def _png(size: tuple[int, int] = (32, 24)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


def test_demo_caps_are_the_http_service_caps() -> None:
    pytest.importorskip("fastapi")
    from sfdeploy.serving import server

    assert MAX_UPLOAD_BYTES == server.DEFAULT_MAX_BYTES
    assert MAX_PIXELS == server.DEFAULT_MAX_PIXELS


def test_oversized_data_url_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """30 MB inline (the issue's case): refused from its length, base64 never decoded, nothing written."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    decoded = []
    real = base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    url = "data:image/png;base64," + "A" * (40 * 2**20)  # 30 MB once decoded
    out = raw_upload_path(SimpleNamespace(url=url, path=None))
    assert decoded == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(BadImage, match=r"30\.0 MB, over the limit of 20 MB"):
        load_input(out)


def test_inline_upload_under_the_cap_is_decoded_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    image, _ = load_input(raw_upload_path(SimpleNamespace(url=url, path=None)))
    assert image.shape == (24, 32, 3) and list(tmp_path.iterdir()) == []
    for bad in ("data:image/png,not-base64-at-all", "data:image/png;base64,%%%%"):
        with pytest.raises(BadImage):
            load_input(raw_upload_path(SimpleNamespace(url=bad, path=None)))


def test_oversized_file_upload_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gradio's /upload cap is the front door; load_input checks every file it is given (examples, API paths)."""
    big = tmp_path / "big.png"
    big.write_bytes(_png())
    with big.open("r+b") as fh:  # a valid PNG followed by zeros: 21 MB (sparse, costs no disk)
        fh.truncate(21 * 2**20)
    called = []
    monkeypatch.setattr(inputs, "load_image", lambda *a, **k: called.append(1))
    with pytest.raises(BadImage, match=r"21\.0 MB, over the limit of 20 MB"):
        load_input(big)
    assert called == []


def test_gradio_cache_is_cleaned(tmp_path: Path) -> None:
    demo = build_app(tmp_path / "none", store=ModelStore(warmup=False))
    frequency, age = demo.delete_cache
    assert 0 < frequency <= 3600 and 0 < age <= 24 * 3600


def _event_names(demo) -> set[str]:  # noqa: ANN001
    return {getattr(fn.fn, "__name__", "") for fn in demo.fns.values() if fn.fn is not None}


def test_only_the_detect_button_is_a_documented_api_endpoint(tiny_models: Path) -> None:
    demo = build_app(tiny_models / "pair", store=ModelStore(warmup=False))
    public = {name for name, info in demo.get_api_info()["named_endpoints"].items()}
    assert public == {"/detect"}
    assert "on_train" not in _event_names(demo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text.startswith(b"{") else {"raw": text.decode(errors="replace")}


@pytest.mark.timeout(180)
def test_train_endpoint_is_not_callable_unless_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /gradio_api/call/on_train (the issue's attack) must not start training into the models folder."""
    import sfdeploy.app.quickstart as tq

    started: list[Path] = []
    monkeypatch.setattr(tq, "quickstart", lambda out, **kw: started.append(Path(out)))
    for allow_train in (False, True):
        demo = build_app(tmp_path / f"models-{allow_train}", store=ModelStore(warmup=False),
                             allow_train=allow_train)
        assert ("on_train" in _event_names(demo)) is allow_train
        port = _free_port()
        launch(demo, host="127.0.0.1", port=port, block=False, quiet=True)
        try:
            status, body = _post(f"http://127.0.0.1:{port}/gradio_api/call/on_train", {"data": ["retinanet", True]})
            deadline = time.time() + 30
            while allow_train and not started and time.time() < deadline:
                time.sleep(0.2)
        finally:
            demo.close()
        if allow_train:  # the operator's choice: the page's button (and so its event) works
            assert status == 200 and "event_id" in body
            assert started == [tmp_path / "models-True"]
        else:
            assert status == 404 and started == []  # a one-line 404, not gradio's 500
            assert "no such endpoint" in body.get("error", "") and "\n" not in body["error"]
            assert not (tmp_path / "models-False").exists()
