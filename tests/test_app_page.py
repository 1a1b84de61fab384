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


def test_unknown_pages_answer_404_with_the_not_found_page_and_known_ones_200(tmp_path):
    """Through the real server process: an unknown page path gets Dash's page (which draws the 404
    page) with the status 404; pages, assets and the API keep their statuses."""
    from dashboard.synthetic import write_synthetic_run
    from live_helpers import http, serving

    write_synthetic_run(tmp_path / "runs" / "syn", 30, seed=1)
    with serving(["--data", str(tmp_path / "runs"), "--no-worker"], tmp_path) as srv:
        for path, status in (("/no-such-page", 404), ("/maps", 404), ("/404", 404), ("/map", 200),
                             ("/findings", 200), ("/runs", 200), ("/api/runs", 200), ("/api/nope", 404)):
            code, headers, body = http(srv.url + path)
            assert code == status, (path, code)
            if path in ("/no-such-page", "/map"):
                assert headers["Content-Type"].startswith("text/html") and b"_dash-config" in body, path


def test_mistyped_commands_and_flags_get_did_you_mean(capsys):
    import pytest

    from interfaces.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serv"])
    assert info.value.code == 2 and capsys.readouterr().err.strip().endswith("(did you mean 'serve'?)")
    with pytest.raises(SystemExit):
        main(["findings", "RUN", "--bootstrp", "300"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "llm-maps findings: error: unrecognized arguments: --bootstrp 300 (did you mean --bootstrap?)")
    with pytest.raises(SystemExit):
        main(["findings", "RUN", "--zzzz"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == "llm-maps findings: error: unrecognized arguments: --zzzz"
