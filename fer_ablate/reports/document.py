"""One report, two renderings: markdown (``report.md``) and a self-contained HTML page (``report.html``).

A report is a list of blocks (headings, paragraphs, bullet lists, tables, figures). Tables are pandas
DataFrames of display strings, so the HTML page gets real ``<table>`` elements (``DataFrame.to_html``,
cells escaped) and the markdown the same rows.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}"
         "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "th{background:#f2f2f2}td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}"
         "img{max-width:100%}figure{margin:1em 0}")


@dataclass
class Report:
    """Blocks in order: ``("h", text)``, ``("p", text)``, ``("ul", [items])``, ``("table", DataFrame)``,
    ``("figures", [png paths])``."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        """A section heading."""
        self.blocks.append(("h", text))

    def paragraph(self, text: str) -> None:
        """A paragraph of plain text (skipped when empty)."""
        if text.strip():
            self.blocks.append(("p", text.strip()))

    def bullets(self, items: list[str]) -> None:
        """A bullet list (skipped when empty)."""
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        """A table of display strings, one list per row, ``len(columns)`` cells each."""
        self.blocks.append(("table", pd.DataFrame(rows, columns=columns, dtype=str)))

    def figures(self, paths: list[Path]) -> None:
        """PNG figures: linked by file name in markdown, embedded (base64) in HTML."""
        self.blocks.append(("figures", list(paths)))

    def markdown(self) -> str:
        """The report as GitHub-flavoured markdown."""
        out = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "h":
                out += [f"## {body}", ""]
            elif kind == "p":
                out += [str(body), ""]
            elif kind == "ul":
                out += [f"- {item}" for item in body] + [""]
            elif kind == "table":
                out += _markdown_table(body) + [""]
            elif kind == "figures":
                out += [f"![{p.stem}]({p.name})" for p in body] + [""]
        return "\n".join(out)

    def html(self) -> str:
        """A self-contained HTML page: real tables, every figure embedded."""
        out = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, body in self.blocks:
            if kind == "h":
                out.append(f"<h2>{html.escape(str(body))}</h2>")
            elif kind == "p":
                out.append(f"<p>{html.escape(str(body))}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in body) + "</ul>")
            elif kind == "table":
                out.append(body.to_html(index=False, escape=True, border=0, na_rep=""))
            elif kind == "figures":
                for p in body:
                    data = base64.b64encode(Path(p).read_bytes()).decode()
                    out.append(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}">'
                               f"<figcaption>{html.escape(p.stem)}</figcaption></figure>")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")

    def write(self, folder: Path) -> list[Path]:
        """Write ``report.md`` and ``report.html`` into ``folder``; return both paths."""
        md, page = Path(folder) / "report.md", Path(folder) / "report.html"
        md.write_text(self.markdown())
        page.write_text(self.html())
        return [md, page]


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines
