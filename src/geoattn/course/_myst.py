"""MyST-only markdown turned into plain Markdown, for student copies read in Jupyter and Colab.

The book's markdown cells use a few MyST constructs that only Sphinx renders: directives
(``:::{exercise}``, ``:::{note}``), roles (``{cite:p}``, ``{doc}``, ``{ref}``) and targets
(``(label)=``). Jupyter and Colab show them as raw text, so a student copy rewrites each
one into what it means in plain Markdown. Anything this module does not know raises a
``ValueError``: a construct that is silently left in would show as literal syntax.

No dependency beyond the standard library: ``import geoattn.course.student`` stays cheap.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

__all__ = ["MystConverter", "parse_bibtex", "MYST_SYNTAX"]

# A directive's opening fence: three or more backticks or colons, then {name}.
_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{(?P<name>[^}\s]+)\}[ \t]*(?P<arg>.*)$")
_OPTION = re.compile(r"^[ \t]*:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
_ROLE = re.compile(r"\{(?P<name>[\w:.-]+)\}`(?P<text>[^`]*)`")
_TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.S)
_TARGET = re.compile(r"^\((?P<label>[^)\s]+)\)=[ \t]*$")

# What a test looks for in a student copy: any leftover directive fence, role or target.
MYST_SYNTAX = re.compile(r"^[ \t]*(`{3,}|:{3,})\{|\{[\w:.-]+\}`|^\([^)\s]+\)=[ \t]*$", re.M)

_ADMONITIONS = {"note", "tip", "hint", "important", "warning", "caution", "attention", "danger",
                "error", "seealso", "admonition"}

# LaTeX accent commands in BibTeX names, as Unicode combining marks.
_ACCENTS = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "^": "\u0302", "~": "\u0303", "c": "\u0327",
            "v": "\u030c", "u": "\u0306", "=": "\u0304", ".": "\u0307", "H": "\u030b", "r": "\u030a"}
_LETTERS = {"L": "Ł", "l": "ł", "o": "ø", "O": "Ø", "ss": "ß", "ae": "æ", "AE": "Æ", "aa": "å", "AA": "Å",
            "i": "ı"}


def _latex_to_text(s: str) -> str:
    """Accents and special letters of BibTeX fields to Unicode; braces dropped."""
    s = re.sub(r"\\([`'\"^~=.Hcvur])\s*\{?\\?([A-Za-z])\}?",
               lambda m: m.group(2) + _ACCENTS[m.group(1)], s)
    s = re.sub(r"\\(ss|ae|AE|aa|AA|[LlOoi])(?![A-Za-z])\s*", lambda m: _LETTERS[m.group(1)], s)
    return unicodedata.normalize("NFC", s.replace("{", "").replace("}", ""))


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside braces."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def parse_bibtex(text: str, source: str = "references.bib") -> dict[str, dict[str, str]]:
    """Entries of a BibTeX file as ``{key: {field: value}}`` (field names lower case).

    A small parser for the book's own file: ``@type{key, field = {value} or "value" or
    number, ...}`` with nested braces. ``source`` names the file in error messages.
    """
    entries: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"@(\w+)\s*\{", text):
        if match.group(1).lower() in ("comment", "preamble", "string"):
            continue
        start, depth, i = match.end(), 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            line = text.count("\n", 0, match.start()) + 1
            raise ValueError(f"{source}, line {line}: the entry has no closing brace")
        key, _, body = text[start:i - 1].partition(",")
        fields = {}
        for part in _split_top(body, ","):
            name, eq, value = part.partition("=")
            if not eq:
                continue
            value = value.strip()
            if value[:1] in "{\"" and value[-1:] in "}\"":
                value = value[1:-1]
            fields[name.strip().lower()] = " ".join(value.split())
        entries[key.strip()] = fields
    return entries


def _surnames(authors: str) -> list[str]:
    names = []
    for person in _split_top(authors, " and "):
        person = person.strip()
        if person == "others":
            names.append("others")
        elif "," in person:
            names.append(_latex_to_text(person.split(",")[0].strip()))
        else:  # "First Last": the last word (a braced group counts as one word)
            names.append(_latex_to_text(_split_top(person, " ")[-1]))
    return names


def _author_text(entry: dict[str, str], key: str) -> str:
    names = _surnames(entry.get("author") or entry.get("editor") or "")
    if not names or names == ["others"]:
        raise ValueError(f"citation {key!r}: the entry has no author")
    if len(names) == 1:
        return names[0]
    if len(names) == 2 and names[1] != "others":
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} et al."


class MystConverter:
    """Rewrites the MyST-only constructs of one markdown cell as plain Markdown.

    ``bib`` maps citation keys to BibTeX fields (see :func:`parse_bibtex`); ``chapter`` is
    the chapter number that prefixes exercise numbers ("Exercise 4.2"). Exercises are
    numbered in the order :meth:`convert` meets them, as the book numbers them.
    """

    def __init__(self, bib: dict[str, dict[str, str]] | None = None, chapter: int | None = None):
        self.bib = bib or {}
        self.chapter = chapter
        self.exercises: dict[str, str] = {}  # label -> "Exercise 4.2"
        self._count = 0

    # ------------------------------------------------------------------- roles

    def _cite(self, keys: str, textual: bool, where: str) -> str:
        parts = []
        for key in (k.strip() for k in keys.split(",")):
            entry = self.bib.get(key)
            if entry is None:
                raise ValueError(f"{where}: citation {key!r} is not in the bibliography")
            year = entry.get("year", "n.d.")
            who = _author_text(entry, key)
            parts.append(f"{who} ({year})" if textual else f"{who}, {year}")
        return ", ".join(parts) if textual else "(" + "; ".join(parts) + ")"

    def _role(self, match: re.Match, where: str) -> str:
        name, text = match.group("name"), match.group("text")
        titled = _TITLED.match(text)
        title, target = (titled.group("title"), titled.group("target")) if titled else (None, text)
        if name in ("cite", "cite:p", "cite:ps"):
            return self._cite(text, textual=False, where=where)
        if name in ("cite:t", "cite:ts"):
            return self._cite(text, textual=True, where=where)
        if name == "doc":
            path = target.strip()
            link = path if path.endswith((".ipynb", ".md")) else f"{path}.ipynb"
            return f"[{title or Path(path).name}]({link})"
        if name in ("ref", "numref"):
            # Targets become anchors (see _lines), so a reference within the page still links.
            text = title or self.exercises.get(target, target)
            return f"[{text}](#{target.strip()})"
        if name in ("eq", "term"):
            return title or target
        if name == "math":
            return f"${text}$"
        if name in ("code", "literal", "samp", "file", "kbd"):
            return f"`{text}`"
        if name in ("sub", "sup", "abbr", "dfn", "emphasis", "strong", "index"):
            return text
        raise ValueError(f"{where}: the MyST role {{{name}}} has no plain-Markdown form in student copies")

    def _roles(self, line: str, where: str) -> str:
        return _ROLE.sub(lambda m: self._role(m, where), line)

    # -------------------------------------------------------------- directives

    def _exercise(self, arg: str, options: dict[str, str], body: list[str], where: str) -> list[str]:
        label = options.get("label")
        if "nonumber" in options:
            heading = "Exercise"
        else:
            self._count += 1
            heading = f"Exercise {self.chapter}.{self._count}" if self.chapter else f"Exercise {self._count}"
            if label:
                self.exercises[label] = heading
        title = self._roles(arg.strip(), where)
        head = f"**{heading}{': ' + title if title else ''}**"
        if label:
            head += f" <a id=\"{label}\"></a>"  # the label, as an anchor Jupyter and Colab keep
        return [head, "", *body]

    def _admonition(self, name: str, arg: str, body: list[str]) -> list[str]:
        title = arg.strip() if name == "admonition" and arg.strip() else name.capitalize()
        if name == "seealso":
            title = "See also"
        quoted = [f"> **{title}.**", ">"] + [f"> {line}" if line.strip() else ">" for line in body]
        return quoted

    def _directive(self, name: str, arg: str, lines: list[str], where: str) -> list[str]:
        options: dict[str, str] = {}
        while lines and _OPTION.match(lines[0]):
            opt = _OPTION.match(lines.pop(0))
            options[opt.group("key")] = opt.group("value").strip()
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        body = self._lines(lines, where)
        lowered = name.lower()
        if lowered == "exercise":
            return self._exercise(arg, options, body, where)
        if lowered in _ADMONITIONS:
            return self._admonition(lowered, self._roles(arg, where), body)
        if lowered in ("math",):
            return ["$$", *lines, "$$"]
        raise ValueError(f"{where}: the MyST directive {{{name}}} has no plain-Markdown form in student copies")

    def _lines(self, lines: list[str], where: str) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            opened = _FENCE_OPEN.match(line)
            if opened:
                fence = opened.group("fence")
                closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
                j = i + 1
                while j < len(lines) and not closing.match(lines[j]):
                    j += 1
                if j == len(lines):
                    raise ValueError(f"{where}: the {{{opened.group('name')}}} directive opened by {line.strip()!r} "
                                     f"is never closed")
                out.extend(self._directive(opened.group("name"), opened.group("arg"), lines[i + 1:j], where))
                i = j + 1
                continue
            target = _TARGET.match(line)
            if target:  # a cross-reference target: an anchor that links still reach
                out.append(f'<a id="{target.group("label")}"></a>')
                i += 1
                continue
            out.append(self._roles(line, where))
            i += 1
        return out

    def convert(self, source: str, where: str = "cell") -> str:
        """``source`` (one markdown cell) with every MyST-only construct in plain Markdown."""
        text = "\n".join(self._lines(source.split("\n"), where))
        leftover = MYST_SYNTAX.search(text)
        if leftover:
            raise ValueError(f"{where}: MyST syntax {leftover.group(0)!r} would reach the student copy")
        return text
