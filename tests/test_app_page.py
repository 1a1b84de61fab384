"""The page Dash serves: assets/early.js inlined in its head (before Dash's scripts), with the
app's URL prefix, and not loaded a second time as an ordinary asset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dashboard.app import EARLY_JS, create_app
from dashboard.synthetic import write_synthetic_run


@pytest.mark.parametrize("prefix", ["/", "/team/maps/"])
def test_the_early_script_is_assets_early_js_inlined_before_dashs_scripts(tmp_path, prefix):
    run = write_synthetic_run(tmp_path / "r", 40)
    app = create_app([run], [], state_dir=tmp_path / "state", prefix=prefix)
    page = app.server.test_client().get(f"{prefix}map").get_data(as_text=True)
    head, body = page.split("</head>", 1)
    m = re.search(r'<script data-plen="(\d+)" data-url="([^"]+)" data-dcc="([^"]+)">\n(.*?)</script>', head, re.S)
    assert m is not None, head
    assert int(m.group(1)) == len(prefix)
    assert re.fullmatch(re.escape(prefix) + r"assets/vendor/plotly-llm-maps\.min\.js\?m=\d+", m.group(2))
    assert m.group(3) == f"{prefix}_dash-component-suites/dash/dcc/"
    code = [line for line in EARLY_JS.read_text(encoding="utf-8").splitlines() if not line.startswith("//")]
    assert m.group(4).strip() == "\n".join(code).strip()  # the file, less its header comment
    assert "early.js" not in page  # Dash does not add it as an asset (assets_ignore)
    assert "dashboard.js" in body  # ordinary assets still are
    assert Path(EARLY_JS).parent.name == "assets"
