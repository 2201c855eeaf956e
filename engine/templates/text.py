"""The text part: an HTML document turned into readable text (links as ``text (url)``)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK_TAGS = {
    "p", "div", "table", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
    "blockquote", "section", "article", "header", "footer", "center", "pre",
}  # fmt: skip
_SKIP_TAGS = {"head", "style", "script", "title"}
_VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
_HIDDEN = re.compile(r"display\s*:\s*none", re.I)


class _TextConverter(HTMLParser):
    """HTML → readable text; links become ``text (url)``; hidden and head elements vanish."""

    def __init__(self, statements: frozenset[str] = frozenset()) -> None:
        super().__init__(convert_charrefs=True)
        self.statements = statements  # placeholders of {% %} tags: always kept, for balance
        self.out: list[str] = []
        self.skip: list[str] = []  # stack of tags whose content is skipped
        self.links: list[tuple[str | None, int]] = []
        self.lists: list[dict | None] = []  # open lists: <ol> item markers, None for <ul>

    def _keep_statements(self, text: str | None) -> None:
        """Text that is not shown still carries its {% %} tags, so that the text template balances."""
        if text and self.statements:
            self.out.extend(p for p in _PLACEHOLDER.findall(text) if p in self.statements)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for key, value in attrs:
            self._keep_statements(key)
            if key != "href":
                self._keep_statements(value)
        if self.skip:
            if tag not in _VOID_TAGS:
                self.skip.append(tag)
            return
        hidden = (
            tag in _SKIP_TAGS
            or _HIDDEN.search(attributes.get("style") or "")
            or ("preheader" in (attributes.get("class") or "").split())
        )
        if hidden:
            if tag not in _VOID_TAGS:
                self.skip.append(tag)
            return
        if tag in _BLOCK_TAGS:
            self.out.append("\n\n")
        if tag == "br":
            self.out.append("\n")
        elif tag == "li":
            current = self.lists[-1] if self.lists else None
            if current is not None:
                current["markers"].append(len(self.out))
                self.out.append(f"\n{len(current['markers'])}. ")
            else:
                self.out.append("\n- ")
        elif tag in ("ol", "ul"):
            self.lists.append({"markers": [], "dynamic": False} if tag == "ol" else None)
        elif tag == "hr":
            self.out.append("\n\n----------\n\n")
        elif tag == "img" and attributes.get("alt"):
            self.out.append(attributes["alt"] or "")
        elif tag == "a":
            self.links.append((attributes.get("href"), len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if self.skip[-1] == tag:
                self.skip.pop()
            return
        if tag == "a" and self.links:
            href, start = self.links.pop()
            label = " ".join("".join(self.out[start:]).split())
            if href and not href.startswith("#"):
                target = href[len("mailto:") :] if href.startswith("mailto:") else href
                del self.out[start:]
                self.out.append(target if label in ("", target, href) else f"{label} ({target})")
        if tag in ("ol", "ul") and self.lists:
            closed = self.lists.pop()
            if closed is not None and closed["dynamic"]:
                # A loop or condition decides how many items there are: numbers
                # written now would be wrong, so the items become bullets.
                for index in closed["markers"]:
                    self.out[index] = "\n- "
        if tag in _BLOCK_TAGS:
            self.out.append("\n\n")
        elif tag == "tr":
            self.out.append("\n")
        elif tag in ("td", "th"):
            self.out.append(" ")

    def handle_data(self, data: str) -> None:
        if self.skip:
            self._keep_statements(data)
            return
        if self.statements and any(p in self.statements for p in _PLACEHOLDER.findall(data)):
            for open_list in self.lists:
                if open_list is not None:
                    open_list["dynamic"] = True
        self.out.append(re.sub(r"[ \t\r\n\f]+", " ", data))

    def text(self) -> str:
        return "".join(self.out)


_PLACEHOLDER = re.compile(r"jjx\d{5}x")


def html_to_text(html: str, statements: frozenset[str] = frozenset()) -> str:
    """A readable text version of an HTML document (used on the protected template source)."""
    parser = _TextConverter(statements)
    parser.feed(html)
    parser.close()
    return parser.text()


def tidy_text(text: str) -> str:
    """Per message: trim each line and keep at most one empty line in a row."""
    # A plain loop over lines: several times faster than the equivalent regexes here.
    out: list[str] = []
    blank = True
    for line in text.replace("\xa0", " ").replace("\u200c", "").split("\n"):
        line = line.strip(" \t\r")
        if line:
            out.append(line)
            blank = False
        elif not blank:
            out.append("")
            blank = True
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"
