"""Loss-dynamics plots from metrics.jsonl (no training needed)."""

from __future__ import annotations

import json
import math

from sfdeploy.training.report import make_report, plot_comparison


def _write(path, guided: bool, n: int = 30):
    with path.open("w") as fh:
        fh.write(json.dumps({"event": "start", "step": 0}) + "\n")
        for s in range(1, n + 1):
            rec = {"event": "train", "step": s, "lr": 0.01 * min(1, s / 10), "total": 5 * math.exp(-s / 10) + 0.1}
            if guided:
                loc = 1.0 * math.exp(-s / 20)
                raw = 11.5 * math.exp(-s / 5) + 0.2
                rec.update({"classification": loc, "bbox_regression": loc, "guide_delta": -0.01 * s,
                            "guide": {"head.guide": {"g": loc / raw, "delta": 1 + 0.01 * s, "loss_cls_raw": raw,
                                                     "loss_loc": loc}}})
            else:
                rec.update({"classification": 1.2 * math.exp(-s / 10), "bbox_regression": 0.8})
            fh.write(json.dumps(rec) + "\n")
        fh.write('{"event": "train", "step": 31, "total": "nan"}\n')  # NaN as written by a diverging run
        fh.write('{"torn line\n')


def test_report_pngs(tmp_path):
    sf, base = tmp_path / "sf.jsonl", tmp_path / "base.jsonl"
    _write(sf, True)
    _write(base, False)
    pngs = make_report(sf, tmp_path / "sf_plots")
    assert {p.name for p in pngs} == {"losses.png", "guided_scale.png", "total_lr.png"}
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    pngs = make_report(base, tmp_path / "base_plots")
    assert {p.name for p in pngs} == {"losses.png", "total_lr.png"}
    out = plot_comparison({"sampling_free": sf, "baseline": base}, tmp_path / "cmp.png")
    assert out.stat().st_size > 1000
    assert make_report(tmp_path / "empty.jsonl" if (tmp_path / "empty.jsonl").write_text("") == 0 else sf,
                       tmp_path / "none") == []
