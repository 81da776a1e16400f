"""The HTML keeps exercise solutions out of print and out of search, and readers still open
them with one click. Runs in Chromium with the fixtures of ``tests/test_browser.py``."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from test_browser import CHAPTERS, CHROMIUM_ARGS, chromium, html_dir, server  # noqa: F401  (fixtures)

SOLUTIONS_JS = r"""() => [...document.querySelectorAll('.solution')].map(el => {
  const body = [...el.children].filter(c => !c.matches('.admonition-title, button, .toggle-button'));
  return {
    visible: el.checkVisibility() && el.getClientRects().length > 0,
    text: body.map(c => c.textContent).join(' ').replace(/\s+/g, ' ').trim().slice(0, 60),
  };
})"""


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-course")), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        # Offline: only the local server answers (MathJax does not matter here).
        context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1")
                      else r.abort("blockedbyclient"))
        try:
            yield context
        finally:
            context.close()


def _open(browser, server, page_name):  # noqa: F811
    page = browser.new_page()
    page.goto(server + f"{page_name}.html", wait_until="load", timeout=60_000)
    page.wait_for_timeout(300)  # sphinx-togglebutton sets up its buttons on load
    return page


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_the_print_event_leaves_every_solution_hidden(browser, server, page_name):  # noqa: F811
    page = _open(browser, server, page_name)
    try:
        before = page.evaluate(SOLUTIONS_JS)
        assert before, f"{page_name}: no solution on the page, so the test could not see one print"
        page.evaluate("() => window.dispatchEvent(new Event('beforeprint'))")
        page.emulate_media(media="print")
        after = page.evaluate(SOLUTIONS_JS)
        printed = page.evaluate("() => document.body.innerText.replace(/\\s+/g, ' ')")
        shown = [s["text"] for s in after if s["visible"]]
        assert not shown, f"{page_name}: solutions visible when printing: {shown}"
        leaked = [s["text"] for s in after if s["text"] and s["text"] in printed]
        assert not leaked, f"{page_name}: solution text in the printed page: {leaked}"
        # The page still prints its exercises.
        assert re.search(r"Exercise \d+\.\d+", printed)
    finally:
        page.close()


def test_a_reader_opens_a_solution_with_one_click(browser, server):  # noqa: F811
    page = _open(browser, server, CHAPTERS[0])
    try:
        solution = page.locator(".solution").first
        body = solution.locator("section").first
        assert not body.is_visible(), "a solution starts closed"
        solution.locator("button.toggle-button").click()
        page.wait_for_timeout(300)
        assert body.is_visible(), "one click on the toggle shows the solution"
    finally:
        page.close()


# ---------------------------------------------------------------------------- search

class _Text(HTMLParser):
    """Words of a page, split into those inside a solution and those outside; and the text of
    each solution."""

    def __init__(self):
        super().__init__()
        self.stack: list[bool] = []
        self.inside, self.outside = [], []
        self.solutions: list[list[str]] = []  # the text of each solution, in pieces
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "img", "input", "meta", "link", "hr", "wbr", "col", "area", "source"):
            return
        classes = (dict(attrs).get("class") or "").split()
        parent = bool(self.stack) and self.stack[-1]
        if "solution" in classes and not parent:
            self.solutions.append([])
        self.stack.append("solution" in classes or parent)
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        if tag in ("br", "img", "input", "meta", "link", "hr", "wbr", "col", "area", "source"):
            return
        if self.stack:
            self.stack.pop()
        self.skip -= tag in ("script", "style")

    def handle_data(self, data):
        if self.skip > 0:
            return
        words = re.findall(r"[a-z]{4,}", data.lower())
        inside = self.stack and self.stack[-1]
        (self.inside if inside else self.outside).extend(words)
        if inside:
            self.solutions[-1].append(data)


def _indexed_terms(text: str, lang) -> set[str]:
    """The terms Sphinx's indexer would make of ``text`` (as IndexBuilder.feed does)."""
    terms = set()
    for word in lang.split(text):
        stemmed = lang.stem(word).lower()
        if not lang.word_filter(stemmed) and lang.word_filter(word):
            stemmed = word
        if lang.word_filter(stemmed):
            terms.add(stemmed)
    return terms


def test_the_search_index_holds_no_solution_text(html_dir):  # noqa: F811
    from sphinx.search.en import SearchEnglish

    lang = SearchEnglish({})
    stem = lang.stem
    text = (html_dir / "searchindex.js").read_text()
    index = json.loads(text[text.index("(") + 1: text.rindex(")")])
    terms = set(index["terms"]) | set(index["titleterms"])
    inside, outside, solutions = set(), set(), {}
    for page in index["docnames"]:  # every indexed page: a word outside solutions anywhere may be indexed
        parser = _Text()
        parser.feed((html_dir / f"{page}.html").read_text())
        inside |= {stem(w) for w in parser.inside}
        outside |= {stem(w) for w in parser.outside}
        solutions[page] = [" ".join(pieces) for pieces in parser.solutions]
    only_in_solutions = inside - outside
    leaked = sorted(only_in_solutions & terms)
    assert not leaked, f"the search index holds words found only in solutions: {leaked[:20]}"

    # The test can see a leak. The index is the book's (it holds the words of the pages) ...
    assert {stem("attention"), stem("softmax"), stem("exercise")} <= terms
    # ... the solutions hold many words of their own ...
    assert len(only_in_solutions) > 20, "the solutions should hold words of their own"
    # ... and in every chapter, the solutions hold words that the indexer would index and the
    # check above would flag, were that chapter's solutions indexed (the canaries, taken
    # from the solutions themselves, so that no edit of the prose elsewhere disarms the test).
    for page in CHAPTERS:
        assert solutions.get(page), f"{page}: no solution found in the page (has their HTML changed?)"
        canaries = set().union(*(_indexed_terms(t, lang) for t in solutions[page])) & only_in_solutions
        assert canaries, (f"{page}: every word of its solutions also appears outside them, so the test "
                          "could not tell whether they leak into the search index")


SUMMARY_TEXT_JS = r"""async (name) => {
  const html = await (await fetch(name + '.html')).text();
  const doc = new DOMParser().parseFromString(html, 'text/html');
  const squash = (t) => t.replace(/\s+/g, ' ').trim();
  const solutions = [...doc.querySelectorAll('.solution')].map(el => squash([...el.children]
    .filter(c => !c.matches('.admonition-title, button, .toggle-button')).map(c => c.textContent).join(' ')));
  return {patched: !!Search._courseNoSolutions, solutions,
          quoted: squash(Search.htmlToText(html, '')),
          unpatched: squash(Search._courseHtmlToTextWithSolutions(html, ''))};
}"""


def test_search_summaries_quote_no_solution(browser, server):  # noqa: F811
    """The search page quotes ~240 characters of each page it finds, taken from
    ``Search.htmlToText``; on this book that text leaves the solutions out."""
    page = browser.new_page()
    try:
        page.goto(server + "search.html?q=attention", wait_until="load", timeout=60_000)
        for page_name in CHAPTERS:
            got = page.evaluate(SUMMARY_TEXT_JS, page_name)
            assert got["patched"], "course-print.js did not patch the search page's htmlToText"
            solutions = [s[:60] for s in got["solutions"] if len(s) >= 20]
            assert solutions, f"{page_name}: no solution found in the page"
            # The page's text with solutions holds them (so the test can see a leak) ...
            assert all(s in got["unpatched"] for s in solutions)
            # ... and the text the summaries quote from does not.
            leaked = [s for s in solutions if s in got["quoted"]]
            assert not leaked, f"{page_name}: search summaries can quote solutions: {leaked}"
            assert "Exercise" in got["quoted"]
    finally:
        page.close()


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_exercises_are_numbered_per_chapter(html_dir, page_name):  # noqa: F811
    """Chapter 4's exercises read "Exercise 4.1", "Exercise 4.2", ..., not a count through the book."""
    html = (html_dir / f"{page_name}.html").read_text()
    chapter = CHAPTERS.index(page_name) + 1
    numbers = sorted(set(re.findall(r"Exercise (\d+)\.(\d+)", html)), key=lambda n: (int(n[0]), int(n[1])))
    assert numbers, f"{page_name}: no numbered exercise"
    assert {int(c) for c, _ in numbers} == {chapter}
    assert [int(k) for _, k in numbers] == list(range(1, len(numbers) + 1))
