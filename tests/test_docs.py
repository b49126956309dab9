"""The documentation site: it builds with --strict, and in a browser with no network the equations are
typeset, the API reference is rendered and every figure decodes; every link of README.md and docs/ resolves.

The build runs here, into a temporary folder, with the same mkdocs.yml and hooks as `make docs` (the hook
serves KaTeX from the npm package, installing it into build/npm/ once when it is missing).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from browser import headless_chrome

ROOT = Path(__file__).resolve().parents[1]
MISSING_KATEX = "KaTeX is not available"  # the message of docs/hooks.py when KaTeX cannot be obtained
EXPERIMENT_PAGES = ("table1", "fig4-fig5", "collapse", "table2", "schane", "sweeps", "extensions")
# external links are allowed only to these sites (papers, code hosts, package registries, docs sites)
ALLOWED_HOSTS = ("arxiv.org", "github.com", "pypi.org", "readthedocs.io", "pytorch.org", "mkdocs.org")

# [text](target) and ![alt](target), with an optional "title"; <img src="..."> and <a href="...">
_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _links(text: str) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))  # code is not a link
    return _MD_LINK.findall(text) + _HTML_LINK.findall(text)


def test_every_link_in_readme_and_docs_resolves_inside_the_repository():
    checked = 0
    problems = []
    for path in _markdown_files():
        for target in _links(path.read_text(encoding="utf-8")):
            where = f"{path.relative_to(ROOT)}: {target}"
            url = urlparse(target)
            if url.scheme in ("http", "https"):
                host = url.hostname or ""
                if not any(host == h or host.endswith("." + h) for h in ALLOWED_HOSTS):
                    problems.append(f"{where} (external host not allowed)")
                continue
            if url.scheme or target.startswith("#"):
                if url.scheme != "mailto" and not target.startswith("#"):
                    problems.append(f"{where} (scheme {url.scheme!r})")
                continue
            if target.startswith("/"):
                problems.append(f"{where} (absolute path)")
                continue
            resolved = (path.parent / unquote(url.path)).resolve()
            checked += 1
            if not resolved.is_relative_to(ROOT):
                problems.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                problems.append(f"{where} (no such file)")
    assert not problems, "broken links:\n" + "\n".join(problems)
    assert checked >= 30  # the pages do link to each other and to results/


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    done = subprocess.run(
        [*command, "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    log = done.stdout + done.stderr
    if done.returncode != 0 and MISSING_KATEX in log:
        pytest.skip(f"cannot build the docs offline: {log.strip().splitlines()[-1]}")
    assert done.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def test_build_is_strict_and_complete(site):
    pages = ["index", "getting-started", "losses", "cli", "configuration", "distributed", "benchmarks", "development"]
    pages += [f"experiments/{name}" for name in EXPERIMENT_PAGES]
    pages += [f"api/{name}" for name in ("losses", "hardening", "geometry", "models", "data", "engine", "experiments")]
    for page in pages:
        assert (site / f"{page}.html").is_file(), page
    for asset in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js"):
        assert (site / "assets" / "katex" / asset).is_file(), asset
    assert any((site / "assets" / "katex" / "fonts").glob("KaTeX_Main-Regular.woff2"))
    assert not (site / "hooks.py").exists()


@pytest.fixture(scope="module")
def server(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = headless_chrome(
        tmp_path_factory.mktemp("profile"),
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # offline: only the local server resolves
    )
    chrome.set_script_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


def _open(browser, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")


def _remote_requests(browser, base: str) -> list[str]:
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    return [name for name in names if not name.startswith(base) and not name.startswith("data:")]


@pytest.mark.parametrize("page", ["index.html", "losses.html"])
def test_equations_are_typeset_offline(browser, server, page):
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server + page)
    count = "return document.querySelectorAll('.arithmatex').length;"
    typeset = "return document.querySelectorAll('.arithmatex .katex').length;"
    total = browser.execute_script(count)
    assert total >= (25 if page == "losses.html" else 1)
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(typeset) >= total)
    # every arithmatex span / block holds a KaTeX rendering, none an error, and no raw TeX delimiter is left
    untouched = browser.execute_script(
        "return Array.from(document.querySelectorAll('.arithmatex'))"
        ".filter(e => !e.querySelector('.katex')).map(e => e.textContent);"
    )
    assert untouched == []
    assert browser.execute_script("return document.querySelectorAll('.katex-error').length;") == 0
    text = browser.find_element("css selector", "article").text
    assert "$$" not in text and "\\[" not in text and "\\(" not in text
    if page == "losses.html":
        assert browser.execute_script("return document.querySelectorAll('.katex-display').length;") >= 10
    # KaTeX's own fonts were served by the site and loaded
    fonts = browser.execute_async_script(
        "const done = arguments[0]; document.fonts.ready.then(() => done("
        "Array.from(document.fonts).filter(f => f.family.includes('KaTeX') && f.status === 'loaded').length));"
    )
    assert fonts >= 1
    assert _remote_requests(browser, server) == []


def test_api_reference_is_rendered(browser, server):
    _open(browser, server + "api/losses.html")
    entries = browser.execute_script(
        "return Array.from(document.querySelectorAll('.doc-function, .doc-class')).map(e => "
        "[e.className, (e.querySelector('.doc-heading') || {}).id || '', "
        "(e.querySelector('.doc-contents') || {textContent: ''}).textContent.trim().length]);"
    )
    by_id = {heading: (kind, size) for kind, heading, size in entries}
    for name, kind in (("contrastive_loss", "doc-function"), ("get_loss", "doc-function"), ("HSCL", "doc-class")):
        key = f"hscl.losses.{name}"
        assert key in by_id, sorted(by_id)
        assert kind in by_id[key][0] and by_id[key][1] > 20, (key, by_id[key])
    headings = browser.execute_script(
        "return Array.from(document.querySelectorAll('.doc-heading')).map(h => h.textContent);"
    )
    assert any("contrastive_loss" in h for h in headings) and any("HSCL" in h for h in headings)
    assert _remote_requests(browser, server) == []


@pytest.mark.parametrize("name", EXPERIMENT_PAGES)
def test_experiment_figures_decode(browser, server, name):
    _open(browser, server + f"experiments/{name}.html")
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img'))"
        ".map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight]);"
    )
    assert images, f"experiments/{name}: no figure"
    for src, complete, width, height in images:
        assert complete and width > 0 and height > 0, src  # decoded, not a broken-image icon
    assert _remote_requests(browser, server) == []


def test_search_works_on_pages_opened_as_files(browser, site):
    """Material's offline plugin: the search index is a script and the Web Worker shim is served by the site,
    so a page opened as a file:// URL finds pages; the previews carry no raw TeX."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1400, 1000)
    _open(browser, (site / "losses.html").as_uri())
    box = browser.find_element("css selector", "input[data-md-component=search-query]")
    box.click()
    box.send_keys("tilting")
    count = "return document.querySelectorAll('.md-search-result__item').length;"
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(count) > 0)
    hits = browser.execute_script(
        "return Array.from(document.querySelectorAll('.md-search-result__item')).map(e => e.textContent);"
    )
    assert any("ilting" in hit for hit in hits), hits[:3]
    assert not any("\\(" in hit or "\\beta" in hit for hit in hits), hits[:3]
    assert [name for name in _remote_requests(browser, site.as_uri()) if not name.startswith("file:")] == []


def test_api_reference_has_no_raw_sphinx_roles_and_links_across_pages(site):
    roles = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):")
    pages = sorted((site / "api").glob("*.html"))
    assert len(pages) >= 8
    raw = {p.name: len(roles.findall(p.read_text(encoding="utf-8"))) for p in pages}
    assert sum(raw.values()) == 0, raw
    assert not roles.search((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    engine = (site / "api" / "engine.html").read_text(encoding="utf-8")
    # a role in a docstring (hscl.engine.checkpoint names :func:`load_checkpoint` and friends) is now a link
    assert engine.count('class="autorefs autorefs-internal"') >= 50


def test_configuration_page_lists_every_key(site):
    import dataclasses

    from hscl.engine.runtime.config import RunConfig

    text = (site / "configuration.html").read_text(encoding="utf-8")
    config = RunConfig()
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                assert f"<code>{section.name}.{f.name}</code>" in text, f"{section.name}.{f.name}"
    assert 'href="configuration.html"' in (site / "cli.html").read_text(encoding="utf-8")
