"""Visible text of an HTML page (standard library parser; scripts and styles dropped)."""

from __future__ import annotations

from html.parser import HTMLParser

_SKIP = {"script", "style", "noscript", "template", "head", "svg"}
_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
          "article", "header", "footer", "pre", "blockquote", "table", "ul", "ol", "dd",
          "dt", "title"}


class _Text(HTMLParser):
    def __init__(self, max_chars: int) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.size = 0
        self.max_chars = max_chars
        self.too_long = False

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in _SKIP:
            self.skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP and self.skip:
            self.skip -= 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip or self.too_long:
            return
        self.size += len(data)
        if self.size > self.max_chars:
            self.too_long = True
            return
        self.parts.append(data)


def html_text(html: str, max_chars: int) -> tuple[str, bool]:
    """(text, too_long): paragraphs separated by blank lines, whitespace collapsed."""
    parser = _Text(max_chars)
    parser.feed(html)
    parser.close()
    blocks = ("".join(parser.parts)).split("\n")
    text = "\n\n".join(" ".join(b.split()) for b in blocks if b.strip())
    return text, parser.too_long
