"""MkDocs hook (mkdocs.yml ``hooks:``): links from the manual to files of the repository outside
docs/ (``[contract.py](../llm_maps/contract.py)``, which read well on GitHub) must point at a file
that exists, or the build fails (as a broken link between pages does with ``--strict``). On the
site they become a link into the repository when mkdocs.yml sets ``repo_url``, else the link's text.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[2]
# [text](target) not preceded by "!" (images stay as they are), target relative (no scheme, no anchor-only)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>(?![a-z][a-z0-9+.-]*:|#)[^)\s]+)\)")


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config["docs_dir"]).resolve()
    source = docs / page.file.src_path
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match) -> str:
        target, _, anchor = match.group("target").partition("#")
        path = (source.parent / target).resolve()
        if path.is_relative_to(docs):
            return match.group(0)  # a page or a file of the site: mkdocs checks it
        if not path.exists() or not path.is_relative_to(REPO):
            raise PluginError(f"{page.file.src_path}: the link to '{target}' points at no file of the repository")
        rel = path.relative_to(REPO).as_posix()
        if repo_url:
            return f"[{match.group('text')}]({repo_url}/blob/main/{rel}{'#' + anchor if anchor else ''})"
        return match.group("text")

    return LINK.sub(rewrite, markdown)
