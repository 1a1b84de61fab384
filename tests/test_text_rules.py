"""What people scan shows the example's own text (instruction, then context), never the chat
template around it; train examples say what is known about them; the Falloff page labels and
tables; the layout faults of issue 20. In real headless Chromium."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard.synthetic import write_synthetic_run
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser
from llm_maps.runfolder import EXAMPLES, write_parquet_atomic

N = 160
SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
          "<|im_start|>user\n")


def chat_prompt(instruction: str, context: str) -> str:
    return SYSTEM + instruction + ("\n\n" + context if context else "") + "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A scored synthetic run whose prompts went through a chat template; some train examples
    were scored too (as `llm-maps score --splits train,test` leaves them)."""
    run = write_synthetic_run(tmp_path_factory.mktemp("text") / "chat", N, seed=5)
    frame = pd.read_parquet(run / EXAMPLES)
    frame["instruction"] = [f"Question {i}: how many legs does animal number {i} have?" for i in range(N)]
    frame["context"] = [("A long story about animal " + f"{i} " * 200) if i % 3 == 0 else "" for i in range(N)]
    frame["prompt"] = [chat_prompt(a, c) for a, c in zip(frame["instruction"], frame["context"])]
    frame["reference"] = [f"{i % 7} legs" for i in range(N)]
    train = (frame["split"] == "train").to_numpy()
    scored_train = train & (np.arange(N) % 2 == 0)
    frame.loc[train & ~scored_train, ["score", "correct", "output"]] = None
    frame.loc[scored_train, "score"] = 1.0
    frame.loc[scored_train, "correct"] = True
    write_parquet_atomic(run / EXAMPLES, frame)
    return run


@pytest.fixture(scope="module")
def chat_data(chat_run):
    from dashboard.data import RunRegistry

    return RunRegistry([chat_run]).load("chat")


@pytest.fixture(scope="module")
def page(chat_run):
    require_browser()
    from playwright.sync_api import sync_playwright

    from dashboard.app import create_app

    app = create_app([chat_run], [])
    with live_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        pg.base = url
        pg.log = ConsoleLog(pg)
        yield pg
        browser.close()


GD = "document.querySelector('#map-graph .js-plotly-plot')"


def _wait_map(page):
    page.wait_for_function(f"() => {GD} && {GD}._fullData && {GD}._fullData[0] && {GD}._fullData[0]._length > 0",
                           timeout=30_000)


def _set(page, component: str, props: dict):
    page.evaluate("([id, props]) => window.dash_clientside.set_props(id, props)", [component, props])


def _first_train_neighbour_rows(data, row):
    return [j for j, _ in data.neighbours(row)]


def test_map_hovers_show_the_instruction_not_the_template(page, chat_data):
    page.goto(f"{page.base}/map?run=chat")
    _wait_map(page)
    texts = page.evaluate(f"() => Array.from({GD}._fullData[0].text || [])")
    rows = page.evaluate(f"() => Array.from({GD}._fullData[0].customdata || [])")  # test rows drawn after train
    assert len(texts) == N and sorted(rows) == list(range(N))
    for i in (0, 1, 3):
        text = texts[rows.index(i)]
        assert text.startswith(f"Question {i}: how many legs does animal number {i} have?<br>"), text
    assert not any("im_start" in t or "SmolLM" in t for t in texts)
    _set(page, "map-hover-row", {"data": 3})  # the hover line below the map (large runs' hover)
    page.wait_for_function("() => document.querySelector('#map-hover').innerText.includes('Question 3:')")
    line = page.inner_text("#map-hover")
    assert line.startswith(f"{chat_data.frame['example_id'][3]} · ") and "im_start" not in line
    assert page.log.take() == []


def test_drilldown_shows_the_question_first_and_the_exact_prompt_one_click_away(page, chat_data):
    row = 3  # has a long context: previews must start at the instruction and cut at a word
    ex = chat_data.frame["example_id"][row]
    page.goto(f"{page.base}/map?run=chat&sel={ex}")
    page.wait_for_selector("#drill-panel-content", timeout=30_000)
    question = page.inner_text(".drill-question")
    assert question == chat_data.frame["instruction"][row] + "\n\n" + chat_data.frame["context"][row].strip()
    details = page.locator("#drill-panel-content details")
    assert not details.evaluate("d => d.open")
    details.locator("summary").click()
    assert page.locator(".drill-prompt").text_content() == chat_data.frame["prompt"][row]
    previews = page.locator(".drill-neighbour").all_inner_texts()
    nbrs = _first_train_neighbour_rows(chat_data, row)
    assert len(previews) == len(nbrs) > 0
    for j, text in zip(nbrs, previews):
        own = chat_data.texts[j]
        assert text.startswith(f"Question {j}: how many legs"), text
        assert "im_start" not in text and len(text) <= 601
        assert text == own or (text.endswith("…") and own.startswith(text[:-1]) and own[len(text) - 1] == " ")
    answers = page.locator(".drill-neighbour-answer").all_inner_texts()
    for j, text in zip(nbrs, answers):
        expected = f"answer: {chat_data.frame['reference'][j]}"
        if j % 2 == 0:  # scored on train
            expected += " · model correct (score 1)"
        assert text == expected
    assert page.log.take() == []


def test_a_train_example_says_what_is_known_not_train(page, chat_data):
    frame = chat_data.frame
    unscored = next(i for i in range(N) if frame["split"][i] == "train" and i % 2 == 1)
    scored = next(i for i in range(N) if frame["split"][i] == "train" and i % 2 == 0)
    for row, verdict in ((unscored, None), (scored, "correct")):
        page.goto(f"{page.base}/map?run=chat&sel={frame['example_id'][row]}")
        page.wait_for_selector("#drill-panel-content", timeout=30_000)
        fields = dict(zip(page.locator("#drill-panel-content table th").all_inner_texts(),
                          page.locator("#drill-panel-content table td").all_inner_texts()))
        assert fields["split"] == "train"
        assert "train" not in fields.get("correctness", "")
        if verdict is None:
            assert "correctness" not in fields and "score" not in fields
        else:
            assert fields["correctness"] == "correct" and fields["score"] == "1"
        assert page.inner_text(".drill-reference") == frame["reference"][row]
    assert page.log.take() == []


def test_playground_neighbours_show_their_question_and_known_answer(page, chat_data):
    frame = chat_data.frame
    train = [i for i in range(N) if frame["split"][i] == "train"][:4]
    page.goto(f"{page.base}/playground?run=chat")
    page.wait_for_selector("#pg-graph .js-plotly-plot", timeout=30_000)
    _set(page, "pg-current", {"data": {"id": "p1", "x": 0.0, "y": 0.0, "dist_to_train": 0.1, "domain": "Chollet",
                                       "neighbours": [{"example_id": frame["example_id"][i], "distance": 0.1 * k}
                                                      for k, i in enumerate(train)]}})
    page.wait_for_selector("#pg-neighbour-list li", timeout=30_000)
    items = page.locator("#pg-neighbour-list li")
    assert items.count() == len(train)
    for k, i in enumerate(train):
        item = items.nth(k)
        assert item.locator(".pg-nbr-text").inner_text() == f"Question {i}: how many legs does animal number {i} have?"
        answer = item.locator(".pg-nbr-answer").inner_text()
        assert answer == f"answer: {frame['reference'][i]}" + (" · model correct (score 1)" if i % 2 == 0 else "")
        assert "not scored" not in item.inner_text() and "im_start" not in item.inner_text()
    # no empty card: the drill-down card shows only once a neighbour is clicked
    card = page.locator("#pg-drill-card")
    assert not card.is_visible()
    items.nth(0).locator("button").click()
    page.wait_for_selector("#pg-drill #drill-panel-content", timeout=30_000)
    assert card.is_visible()
    assert page.log.take() == []


def test_playground_compare_table_gives_the_prompt_room(page):
    page.goto(f"{page.base}/playground?run=chat")
    page.wait_for_selector("#pg-graph .js-plotly-plot", timeout=30_000)
    words = "What is the capital of France and which river runs through it, and why does that matter"
    _set(page, "pg-gens", {"data": [{"id": "g1", "instruction": words, "kind": "generate", "status": "done",
                                     "temperature": 0, "n_tokens": 12, "mean_logprob": -1.234, "perplexity": 3.43,
                                     "path_length": 12.5, "final_dist": 0.123, "hidden": False}]})
    cell = page.locator(".pg-cmp-prompt").first
    cell.wait_for(timeout=30_000)
    box = cell.bounding_box()
    line = float(cell.evaluate("c => parseFloat(getComputedStyle(c).lineHeight) || 18"))
    assert box["width"] >= 180, box
    assert box["height"] <= 4 * line, (box, line)  # a few lines, not one word a line
    page.log.take()  # the page asks the API for the made-up saved point "g1": a 404 we caused


def test_falloff_page_labels_slopes_and_bins_table(page, chat_data):
    page.goto(f"{page.base}/falloff?run=chat&bins=4")
    page.wait_for_selector("#falloff-bins-table", timeout=30_000)
    fgd = "document.querySelector('#falloff-graph .js-plotly-plot')"
    page.wait_for_function(f"() => {fgd} && {fgd}._fullData && {fgd}._fullData.length === 3")
    names = page.evaluate(f"() => {fgd}._fullData.map(t => t.name)")
    for name in names:
        assert "slope " in name and "log-odds per unit distance" in name and "[" in name, name
    # n= labels: one per bin, at its bin's x, on its group's colour, in rows above the data (never on
    # a marker or a bar, never on each other: tests/test_presenter.py)
    check = page.evaluate(f"""() => {{
        const gd = {fgd}; const out = [];
        for (const a of gd.layout.annotations.filter(a => a.text.startsWith('n='))) {{
          const t = gd._fullData.find(t => t.line.color === a.bgcolor && t.x.some((x) => Math.abs(x - a.x) < 1e-12));
          const top = Math.max(...gd._fullData.map(t => Math.max(...t.y.map((y, i) => y + t.error_y.array[i]))));
          out.push([a.text, !!t, a.y > top && a.yanchor === 'top']);
        }}
        return out; }}""")
    assert len(check) == 3 * 4 and all(found and above for _, found, above in check), check
    rows = page.locator("#falloff-bins-table tr.falloff-bin-row")
    assert rows.count() == 3 * 4
    first = rows.nth(0).locator("td").all_inner_texts()
    assert first[0] == "all" and first[1] == "1" and first[6].startswith("[")
    groups = page.locator("#falloff-bins-table td.falloff-group-row").all_inner_texts()
    assert groups[0].startswith("all · accuracy ") and "log-odds of correct per unit of distance" in groups[0]
    assert page.log.take() == []


def test_layout_faults_are_fixed(page):
    page.goto(f"{page.base}/map?run=chat")
    _wait_map(page)
    # the distance-range number boxes show their whole value
    clipped = page.evaluate("""() => Array.from(document.querySelectorAll('#map-dist input, #map-score input'))
        .map(i => [i.value, i.scrollWidth - i.clientWidth])""")
    assert clipped and all(over <= 1 for _, over in clipped), clipped
    # the dark theme darkens the search box too
    page.locator("#theme-dark").check()
    page.wait_for_function("() => document.documentElement.getAttribute('data-bs-theme') === 'dark'")
    bg = page.evaluate("() => getComputedStyle(document.querySelector('#map-search')).backgroundColor")
    rgb = [float(v) for v in bg[bg.index("(") + 1: bg.index(")")].split(",")[:3]]
    assert sum(rgb) < 3 * 100, bg
    page.locator("#theme-dark").uncheck()
    # the Examples table's header icons never cover the header's text
    page.goto(f"{page.base}/examples?run=chat")
    page.wait_for_selector(".ag-header-cell[col-id='split'] .ag-header-cell-text", timeout=30_000)
    page.click(".ag-header-cell[col-id='split'] .ag-header-cell-text")  # sorted: the sort icon shows too
    page.wait_for_selector(".ag-header-cell[col-id='split'] .ag-sort-indicator-icon:not(.ag-hidden)", timeout=10_000)
    page.hover(".ag-header-cell[col-id='split']")
    page.wait_for_timeout(300)
    overlap = page.evaluate("""() => {
        const out = [];
        for (const cell of document.querySelectorAll('.ag-header-cell')) {
          const text = cell.querySelector('.ag-header-cell-text');
          if (!text) continue;
          const t = text.getBoundingClientRect();
          const need = text.scrollWidth > text.clientWidth;
          for (const icon of cell.querySelectorAll('.ag-header-icon, .ag-header-cell-menu-button, .ag-icon')) {
            const r = icon.getBoundingClientRect();
            if (r.width && r.left < t.right - 0.5 && r.right > t.left + 0.5) out.push([cell.getAttribute('col-id'), 'icon']);
          }
          if (need) out.push([cell.getAttribute('col-id'), 'cut']);
        }
        return out; }""")
    assert overlap == [], overlap
