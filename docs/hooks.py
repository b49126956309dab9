"""MkDocs hooks of the hscl site (declared under ``hooks:`` in mkdocs.yml).

Two things the site needs from outside ``docs/``, added at build time so that nothing is copied into the
repository:

- KaTeX, so that equations render offline. Its files come from the npm package ``katex`` (0.16), installed
  once with ``npm install --no-save --prefix build/npm katex@0.16`` (this hook runs that command when the
  package is missing; ``HSCL_KATEX_DIR`` may point to another ``katex/dist`` folder). ``katex.min.js``,
  ``katex.min.css``, ``fonts/`` and ``contrib/auto-render.min.js`` are served as ``assets/katex/...``.
- The Web Worker shim that Material's offline plugin needs for search on pages opened as files (``file://``),
  from the npm package ``iframe-worker`` (installed into ``build/npm`` like KaTeX) and served as
  ``assets/javascripts/iframe-worker-shim.js``; mkdocs.yml lists it under ``extra.polyfills``, so the plugin
  does not point the pages at a CDN instead.
- The API reference of a whole layer. A line ``<!-- api-modules: hscl.engine -->`` in a page becomes one
  mkdocstrings block per public module of that package (every ``*.py`` and sub-package whose name does not
  start with ``_``), so a module added or split later is documented without editing the page. A module that
  another page documents with its own ``::: module`` block is left to that page (one anchor per object, so that
  the API reference's cross-references have one target).
- The configuration reference. A line ``<!-- config-reference -->`` becomes the tables of every ``--set`` key
  that ``docs/config_reference.py`` generates from the config dataclasses, so the page cannot drift from them.
- The measured outputs under ``results/``. A page links a figure by its path in the repository
  (``../../results/table1-quick/fig1.png`` from ``docs/experiments/``), which also resolves when the Markdown
  is read on a code host; the hook serves every file of ``results/`` (except its Markdown notes) as
  ``assets/results/...`` and rewrites those links to it.
- Search previews without raw TeX: the search index's text has its math delimiters removed and TeX commands
  reduced to symbols (``\\beta`` -> β) before Material's offline plugin inlines it.
- A check that every results block of a page (``<!-- results: ... -->``, see ``docs/render_results.py``) still
  holds what its file renders: a page that differs fails the build, naming the block (``make render`` fixes it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

KATEX_VERSION = "0.16"
#: the Web Worker shim of Material's offline plugin (search on pages opened as files), from the npm package
IFRAME_WORKER = ("iframe-worker", "1", "shim/index.js")
SHIM_URI = "assets/javascripts/iframe-worker-shim.js"  # mkdocs.yml's extra.polyfills names it
KATEX_FILES = ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js")
MISSING_KATEX = "KaTeX is not available"  # tests/test_docs.py skips on this message

_API_MODULES = re.compile(r"^<!-- api-modules: ([\w.]+) -->$", re.M)
_CONFIG_REFERENCE = re.compile(r"^<!-- config-reference -->$", re.M)
_EXPLICIT_BLOCK = re.compile(r"^::: ([\w.]+)\s*$", re.M)
#: module -> the pages (src_uri) that document it with an explicit ``::: module`` block; filled by on_files
_EXPLICIT: dict[str, set[str]] = {}
# a Markdown link or image target: ](target) or ](target "title")
_LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")


def _repo_root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def katex_dist(root: Path) -> Path:
    """The ``katex/dist`` folder to serve, installing the npm package into ``build/npm`` when needed."""
    override = os.environ.get("HSCL_KATEX_DIR")
    if override:
        dist = Path(override)
        if not (dist / "katex.min.js").is_file():
            raise PluginError(f"{MISSING_KATEX}: HSCL_KATEX_DIR={override} holds no katex.min.js")
        return dist
    dist = root / "build" / "npm" / "node_modules" / "katex" / "dist"
    if not (dist / "katex.min.js").is_file():
        try:
            npm_file(root, "katex", KATEX_VERSION, "dist/katex.min.js")
        except PluginError as err:
            raise PluginError(f"{MISSING_KATEX}: {err}") from None
    return dist


def npm_file(root: Path, package: str, version: str, relpath: str) -> Path:
    """``relpath`` of the npm package ``package@version``, installed into ``build/npm`` when missing (together
    with KaTeX: ``npm install --no-save`` removes the packages it was not named)."""
    path = root / "build" / "npm" / "node_modules" / package / relpath
    if not path.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise PluginError(f"{package} is not available: npm is not installed (needed once: npm install {package})")
        command = [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(root / "build" / "npm")]
        names = sorted({f"{package}@{version}", f"katex@{KATEX_VERSION}", f"{IFRAME_WORKER[0]}@{IFRAME_WORKER[1]}"})
        done = subprocess.run([*command, *names], capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.is_file():
            raise PluginError(
                f"{package} is not available: `npm install {package}@{version}` failed: {done.stderr[-500:]}"
            )
    return path


def _add(files, config, src_uri: str, path: Path) -> None:
    existing = files.get_file_from_path(src_uri)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, src_uri, abs_src_path=str(path)))


def on_files(files, config):
    root = _repo_root(config)
    dist = katex_dist(root)
    for name in KATEX_FILES:
        _add(files, config, f"assets/katex/{name}", dist / name)
    for font in sorted((dist / "fonts").iterdir()):
        _add(files, config, f"assets/katex/fonts/{font.name}", font)
    _add(files, config, SHIM_URI, npm_file(root, *IFRAME_WORKER))
    results = root / "results"
    for path in sorted(results.rglob("*")):
        if path.is_file() and path.suffix != ".md":
            _add(files, config, f"assets/results/{path.relative_to(results).as_posix()}", path)
    _EXPLICIT.clear()
    for page in files.documentation_pages():
        for name in _EXPLICIT_BLOCK.findall(Path(page.abs_src_path).read_text(encoding="utf-8")):
            _EXPLICIT.setdefault(name, set()).add(page.src_uri)
    return files


def public_modules(root: Path, package: str) -> list[str]:
    """The public modules and sub-packages of ``package`` (found under ``src/``), recursively, by name."""
    folder = root / "src" / Path(*package.split("."))
    if not (folder / "__init__.py").is_file():
        raise PluginError(f"api-modules: {package} is not a package under src/")
    modules = [f"{package}.{p.stem}" for p in folder.glob("*.py") if not p.name.startswith("_")]
    for sub in folder.iterdir():
        if (sub / "__init__.py").is_file() and not sub.name.startswith("_"):
            modules += [f"{package}.{sub.name}", *public_modules(root, f"{package}.{sub.name}")]
    return sorted(modules)


def _renderer(filename: str = "render_results.py"):
    """A module beside this file, loaded by path: by default ``docs/render_results.py``, the renderer of the
    results blocks."""
    name = f"hscl_{Path(filename).stem}"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
    sys.modules[name] = module = importlib.util.module_from_spec(spec)  # registered first: its dataclass looks it up
    spec.loader.exec_module(module)
    return module


def check_results_blocks(markdown: str, where: str, root: Path) -> None:
    """Raise a ``PluginError`` naming the results blocks of a page that differ from what their files render."""
    renderer = _renderer()
    try:
        stale = renderer.stale_blocks(markdown, root)
    except renderer.RenderError as err:
        raise PluginError(f"{where}: {err}") from err
    if stale:
        raise PluginError(f"{where}: results block(s) differ from their files: {'; '.join(stale)} (run `make render`)")


def on_page_markdown(markdown, page, config, files):
    """Check the results blocks; expand ``api-modules`` markers; point links into ``results/`` at the copies
    under ``assets/results/``."""
    root = _repo_root(config)
    check_results_blocks(markdown, page.file.src_uri, root)

    def expand(match: re.Match) -> str:
        names = public_modules(root, match.group(1))
        return "\n\n".join(f"::: {n}" for n in names if not _EXPLICIT.get(n, set()) - {page.file.src_uri})

    markdown = _API_MODULES.sub(expand, markdown)
    if _CONFIG_REFERENCE.search(markdown):
        table = _renderer("config_reference.py").render()
        markdown = _CONFIG_REFERENCE.sub(lambda m: table, markdown)
    docs = Path(config["docs_dir"]).resolve()
    results = root / "results"
    page_dir = Path(page.file.abs_src_path).resolve().parent

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, fragment = target.partition("#")
        resolved = Path(os.path.normpath(page_dir / path))
        if not resolved.is_relative_to(results):
            return match.group(0)
        served = docs / "assets" / "results" / resolved.relative_to(results)
        new = os.path.relpath(served, page_dir).replace(os.sep, "/") + (f"#{fragment}" if fragment else "")
        return f"{match.group(1)}{new}{match.group(3)}"

    return _LINK.sub(rewrite, markdown)


_GREEK = "alpha beta gamma delta epsilon eta theta kappa lambda mu nu pi rho sigma tau phi chi psi omega"
_TEX_SYMBOLS = {
    **{
        name: chr(
            0x3B1
            + "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
            "final-sigma sigma tau upsilon phi chi psi omega".split().index(name)
        )
        for name in _GREEK.split()
    },
    "ge": "\u2265",
    "geq": "\u2265",
    "le": "\u2264",
    "leq": "\u2264",
    "cdot": "\u00b7",
    "times": "\u00d7",
    "in": "\u2208",
    "sum": "\u03a3",
    "infty": "\u221e",
    "to": "\u2192",
    "approx": "\u2248",
    "neq": "\u2260",
}
_TEX_DELIMITERS = re.compile(r"\\[()\[\]]|\$\$")
_TEX_COMMAND = re.compile(r"\\([A-Za-z]+)\s?")


def plain_tex(text: str) -> str:
    """Search previews without raw TeX: math delimiters dropped, Greek letters and relations as symbols, other
    commands (``\\mathbf``, ``\\left``) reduced to their arguments."""
    text = _TEX_DELIMITERS.sub("", text)
    return _TEX_COMMAND.sub(lambda m: _TEX_SYMBOLS.get(m.group(1), ""), text)


@event_priority(-50)  # after the search plugin writes its index, before the offline plugin inlines it
def on_post_build(config):
    index = Path(config["site_dir"]) / "search" / "search_index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        for doc in data.get("docs", []):
            doc["text"] = plain_tex(doc.get("text", ""))
            doc["title"] = plain_tex(doc.get("title", ""))
        index.write_text(json.dumps(data), encoding="utf-8")
