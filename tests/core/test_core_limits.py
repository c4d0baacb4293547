"""sfdeploy.limits: the byte check on base64 payloads must never let a bigger payload through."""

from __future__ import annotations

import base64
import os

import pytest

from sfdeploy.limits import base64_decoded_size


@pytest.mark.parametrize("wrap", [False, True])
def test_base64_size_bound_never_underestimates(wrap: bool) -> None:
    for n in list(range(0, 70)) + [1000, 4096, 65537]:
        text = (base64.encodebytes if wrap else base64.b64encode)(os.urandom(n)).decode()  # encodebytes: 76 cols
        assert n <= base64_decoded_size(text) <= n + len(text) // 4 + 3, (n, wrap)
