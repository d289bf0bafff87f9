"""Reading a report back for the tests: its elements (stdlib html.parser), and the checks every
report must pass whatever its model: each IR node line links to its code and each line of code to
its IR node, every pass has its section, nothing is fetched from outside the file."""
from __future__ import annotations

from html.parser import HTMLParser


class Elements(HTMLParser):
    """Every start tag as ``(tag, attrs dict)``, in order; the text of ``<script>``."""

    def __init__(self, text: str):
        super().__init__()
        self.items, self.scripts, self._in_script = [], [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.items.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def having(self, cls=None, tag=None, attr=None) -> list:
        return [a for t, a in self.items if (tag is None or t == tag) and (attr is None or attr in a)
                and (cls is None or cls in a.get("class", "").split())]


def check_report(text: str, passes) -> Elements:
    """The structural checks; returns the parsed page for more."""
    page = Elements(text)
    ids = [a["id"] for _, a in page.items if "id" in a]
    assert len(ids) == len(set(ids)), "an id is used twice"
    ids = set(ids)
    ir_nodes = {a["data-node"] for a in page.having("ir", attr="data-node")}
    code_nodes = {a["data-node"] for a in page.having("cl", attr="data-node")}
    assert ir_nodes, "no IR node lines"
    assert ir_nodes == code_nodes, (f"IR nodes without code: {sorted(ir_nodes - code_nodes)}; "
                                    f"code without an IR node: {sorted(code_nodes - ir_nodes)}")
    hrefs = {a["href"] for a in page.having(tag="a", attr="href")}
    for node in ir_nodes:  # each IR line: focusable, links to its first line of code, which links back
        assert f"ir-{node}" in ids and f"c-{node}" in ids and f"#c-{node}" in hrefs and f"#ir-{node}" in hrefs, node
    for a in page.having("ir", attr="data-node"):
        assert a.get("tabindex") == "0" and a.get("role") == "button", a
    sections = [a["data-pass"] for a in page.having("pass", attr="data-pass")]
    assert sections == list(passes), (sections, list(passes))
    for tag, a in page.items:  # self-contained: no resource from anywhere else
        assert tag not in ("link", "iframe", "img", "object", "embed"), (tag, a)
        assert "src" not in a, (tag, a)
        for k in ("href", "xlink:href"):
            assert not a.get(k, "#").split(":")[0] in ("http", "https", "file", "//"), (tag, a)
    assert page.scripts and "bngraphReport" in "".join(page.scripts)
    return page
