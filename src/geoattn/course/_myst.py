"""MyST-only markdown turned into plain Markdown, for student copies read in Jupyter and Colab.

The book's markdown cells use a few MyST constructs that only Sphinx renders: directives
(``:::{exercise}``, ``:::{note}``, ``:::{bibliography}``), roles (``{cite:p}``, ``{doc}``,
``{ref}``) and targets (``(label)=``). Jupyter and Colab show them as raw text, so a student
copy rewrites each one into what it means in plain Markdown: an exercise becomes a bold
"Exercise 4.2" heading, a citation "(Author, year)", a note a quoted paragraph, and a
bibliography the list of the works that the notebook cites, formatted from the BibTeX file.
Anything this module does not know raises a ``ValueError``: a construct that is silently
left in would show as literal syntax.

No dependency beyond the standard library at import: ``import geoattn.course.student`` stays
cheap. :func:`directives` imports MyST's own parser (myst-parser, or markdown-it with its
colon-fence plugin) when first called.
"""
from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

__all__ = ["MystConverter", "parse_bibtex", "cited_keys", "format_reference", "MYST_SYNTAX", "directives",
           "targets_of"]

# A directive's opening fence: three or more backticks, tildes or colons, then {name}.
_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})\{(?P<name>[^}\s]+)\}[ \t]*(?P<arg>.*)$")
_OPTION = re.compile(r"^[ \t]*:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
_ROLE = re.compile(r"\{(?P<name>[\w:.-]+)\}`(?P<text>[^`]*)`")
_TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.S)
_TARGET = re.compile(r"^\((?P<label>[^)\s]+)\)=[ \t]*$")
_CITE_ROLES = ("cite", "cite:p", "cite:ps", "cite:t", "cite:ts")
ENTRY_TYPE = "@type"  # parse_bibtex's key for an entry's type: not a possible field name

# What a test looks for in a student copy: any leftover directive fence, role or target.
MYST_SYNTAX = re.compile(r"^[ \t]*(`{3,}|~{3,}|:{3,})\{|\{[\w:.-]+\}`|^\([^)\s]+\)=[ \t]*$", re.M)

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
    number, ...}`` with nested braces. ``source`` names the file in error messages. The
    entry's type (``article``) is kept under the key :data:`ENTRY_TYPE`, which no BibTeX
    field can be named.
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
        fields[ENTRY_TYPE] = match.group(1).lower()
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


_HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t#]*$")


def targets_of(sources, docname: str) -> dict[str, tuple[str, str]]:
    """``{label: (docname, heading)}`` for every ``(label)=`` target in ``sources`` (markdown
    texts); the heading is the title of the section the target opens ("" if none follows)."""
    found: dict[str, tuple[str, str]] = {}
    for source in sources:
        lines = source.split("\n")
        for i, line in enumerate(lines):
            target = _TARGET.match(line)
            if target:
                after = next((x for x in lines[i + 1:] if x.strip()), "")
                heading = _HEADING.match(after)
                found[target.group("label")] = (docname, heading.group("title") if heading else "")
    return found


def cited_keys(sources) -> list[str]:
    """The citation keys of the ``{cite:...}`` roles in ``sources`` (markdown texts), in first-cited order."""
    keys: list[str] = []
    for source in sources:
        for match in _ROLE.finditer(source):
            if match.group("name") in _CITE_ROLES:
                for key in (k.strip() for k in match.group("text").split(",")):
                    if key and key not in keys:
                        keys.append(key)
    return keys


def _field_text(s: str) -> str:
    """A BibTeX field as plain text: accents decoded, braces gone, TeX dashes and quotes typeset."""
    s = s.replace("---", "\u2014").replace("--", "\u2013").replace("``", "\u201c").replace("''", "\u201d")
    return re.sub(r"(?<!\\)~", " ", _latex_to_text(s))


def _person(person: str) -> str:
    """ "Vaswani, Ashish" or "Ashish Vaswani" as "Vaswani, A."; "de Haas, R. J." stays "de Haas, R. J."."""
    person = " ".join(person.split())
    if "," in person:
        parts = [p.strip() for p in _split_top(person, ",")]
        last, given = parts[0], parts[-1] if len(parts) > 1 else ""
    else:
        words = _split_top(person, " ")
        last, given = words[-1], " ".join(words[:-1])
    last, given = _latex_to_text(last), _latex_to_text(given)
    initials = " ".join("-".join(f"{part[0]}." for part in word.split("-") if part)
                        for word in given.split() if word[:1].isalpha())
    return f"{last}, {initials}" if initials else last


def _people_text(entry: dict[str, str], key: str) -> str:
    people = _split_top(entry.get("author") or entry.get("editor") or "", " and ")
    people = [p.strip() for p in people if p.strip()]
    if not people or people[0] == "others":
        raise ValueError(f"reference {key!r}: the entry has no author")
    if len(people) == 1:
        return _person(people[0])
    if len(people) == 2 and people[1] != "others":
        return f"{_person(people[0])} and {_person(people[1])}"
    return f"{_person(people[0])} et al."


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".?!" else text + "."


def format_reference(key: str, entry: dict[str, str]) -> str:
    """One reference-list entry in plain Markdown, e.g. "Vaswani, A. et al. (2017). Attention Is
    All You Need. In *Advances in Neural Information Processing Systems*, 30." followed by the
    entry's DOI (as a https://doi.org link) or URL when it has one."""
    parts = [f"{_people_text(entry, key)} ({entry.get('year', 'n.d.')}).",
             _sentence(_field_text(entry.get("title", key)))]
    venue = entry.get("journal") or entry.get("booktitle")
    if venue:
        where = [f"*{_field_text(venue)}*"]
        volume = entry.get("volume")
        if volume:
            where.append(volume + (f"({entry['number']})" if entry.get("number") else ""))
        if entry.get("pages"):
            where.append(_field_text(entry["pages"]))
        parts.append(("In " if "journal" not in entry else "") + _sentence(", ".join(where)))
    for field in ("howpublished", "publisher", "note"):
        if entry.get(field):
            parts.append(_sentence(_field_text(entry[field])))
    if entry.get("doi"):
        doi = entry["doi"].strip().removeprefix("https://doi.org/")
        parts.append(f"<https://doi.org/{doi}>")
    elif entry.get("url"):
        parts.append(f"<{entry['url'].strip()}>")
    return " ".join(parts)


_COMPARE = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
            ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}


def _filter_value(node, names: dict, expr: str, where: str):
    """Evaluate a sphinxcontrib-bibtex ``:filter:`` expression: names, strings, sets, ``and``,
    ``or``, ``not``, comparisons and ``%`` (a regular-expression search). Nothing is executed."""
    ev = lambda n: _filter_value(n, names, expr, where)  # noqa: E731
    if isinstance(node, ast.Expression):
        return ev(node.body)
    if isinstance(node, ast.BoolOp):
        values = (ev(v) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not ev(node.operand)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = ev(node.left)
        for op, right in zip(node.ops, node.comparators):
            right = ev(right)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return re.search(str(ev(node.right)), str(ev(node.left))) is not None
    if isinstance(node, ast.Name):
        return names.get(node.id.lower(), "")
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bool, int)):
        return node.value
    if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
        return {ev(e) for e in node.elts}
    raise ValueError(f"{where}: the bibliography filter {expr!r} uses {type(node).__name__}, "
                     "which student copies do not evaluate")


class MystConverter:
    """Rewrites the MyST-only constructs of one markdown cell as plain Markdown.

    ``bib`` maps citation keys to BibTeX fields (see :func:`parse_bibtex`); ``chapter`` is
    the chapter number that prefixes exercise numbers ("Exercise 4.2"). Exercises are
    numbered in the order :meth:`convert` meets them, as the book numbers them.

    A ``{bibliography}`` directive lists the works its filter selects (by default, and with
    the book's ``:filter: docname in docnames``, those cited in this notebook). ``cited``
    names the keys the whole notebook cites (see :func:`cited_keys`), so that a list placed
    before a citation still holds it; without it, the list holds what was cited so far.
    ``docname`` is the notebook's name in filters. The copy sees one notebook, so ``cited``
    in a filter means "cited in this notebook" too.

    ``targets`` maps each ``(label)=`` target of the book to (document, the heading after
    it), see :func:`targets_of`: a ``{ref}`` to this page becomes an anchor link, one to
    another chapter a link to that chapter's copy (``05_x.ipynb#label``), and one to a page
    without a copy plain text; without an explicit title it reads the heading, never the
    bare label.

    ``{doc}`` becomes a link to the page's notebook (``[title](04_x.ipynb)``, which opens
    beside the copy in Jupyter and on Colab); when ``notebooks`` names the documents that
    have a student copy, a page outside it (the introduction, a Markdown page) becomes
    its title alone, since a link there would lead nowhere.
    """

    def __init__(self, bib: dict[str, dict[str, str]] | None = None, chapter: int | None = None,
                 cited: list[str] | None = None, docname: str = "", notebooks=None, targets=None):
        self.notebooks = set(notebooks) if notebooks is not None else None
        self.targets: dict[str, tuple[str, str]] = dict(targets or {})
        self.bib = bib or {}
        self.chapter = chapter
        self.cited = list(cited) if cited is not None else None
        self.docname = docname
        self.exercises: dict[str, str] = {}  # label -> "Exercise 4.2"
        self._count = 0
        self._seen: list[str] = []  # keys cited so far, in order

    # ------------------------------------------------------------------- roles

    def _cite(self, keys: str, textual: bool, where: str) -> str:
        parts = []
        for key in (k.strip() for k in keys.split(",")):
            entry = self.bib.get(key)
            if entry is None:
                raise ValueError(f"{where}: citation {key!r} is not in the bibliography")
            if key not in self._seen:
                self._seen.append(key)
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
            text = title or Path(path).name
            if self.notebooks is not None and Path(path).stem not in self.notebooks:
                return text  # a page of the book with no student copy: a link would lead nowhere
            link = path if path.endswith((".ipynb", ".md")) else f"{path}.ipynb"
            return f"[{text}]({link})"
        if name in ("ref", "numref"):
            label = target.strip()
            doc, heading = self.targets.get(label, (None, None))
            text = title or self.exercises.get(label) or heading or label
            if doc is None or doc == self.docname:
                # Targets become anchors (see _lines), so a reference within the page still links.
                return f"[{text}](#{label})"
            if self.notebooks is not None and doc not in self.notebooks:
                return text  # a page with no student copy: a link would lead nowhere
            return f"[{text}]({doc}.ipynb#{label})"  # the other chapter's copy, beside this one
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

    def _bibliography(self, options: dict[str, str], where: str) -> list[str]:
        cited = self.cited if self.cited is not None else self._seen
        missing = [key for key in cited if key not in self.bib]
        if missing:
            raise ValueError(f"{where}: citation {missing[0]!r} is not in the bibliography")
        if "all" in options:
            expr = "True"
        else:
            exprs = ["cited"] * ("cited" in options) + ["not cited"] * ("notcited" in options)
            exprs += [f"({options['filter']})"] if options.get("filter") else []
            expr = " or ".join(exprs) or "cited"
        try:
            tree = ast.parse(expr, mode="eval")
        except SyntaxError:
            raise ValueError(f"{where}: the bibliography filter {options.get('filter')!r} is not "
                             "an expression") from None
        chosen = []
        for key, entry in self.bib.items():
            names = {k: _field_text(v) for k, v in entry.items() if k != ENTRY_TYPE}
            names.update(key=key, type=entry.get(ENTRY_TYPE, ""), cited=key in cited, docname=self.docname,
                         docnames={self.docname} if key in cited else set(),
                         cited_docnames={self.docname} if key in cited else set())
            if _filter_value(tree, names, options.get("filter", expr), where):
                chosen.append(key)

        def order(key):  # as the book sorts its lists: author, year, title
            entry = self.bib[key]
            return (_people_text(entry, key).lower(), entry.get("year", ""), entry.get("title", "").lower())

        if not chosen:
            return ["*No work is cited here.*"]
        return [f"- {format_reference(key, self.bib[key])}" for key in sorted(chosen, key=order)]

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
        if lowered == "bibliography":
            return self._bibliography(options, where)
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


# ------------------------------------------------------------- what MyST reads as a directive

_PARSER = None
# Directives whose content MyST does not parse as Markdown: a fence inside them is text.
_LITERAL_DIRECTIVES = {"code", "code-block", "code-cell", "sourcecode", "math", "raw", "literalinclude", "csv-table"}
_RST_DIRECTIVE = re.compile(r"^[ \t>]*\.\.[ \t]+(?P<name>[\w:+-]+)[ \t]*::", re.M)


def _parser():
    """The block parser MyST itself uses (the book enables colon_fence, dollarmath, amsmath)."""
    global _PARSER
    if _PARSER is None:
        try:
            from markdown_it.renderer import RendererHTML
            from myst_parser.config.main import MdParserConfig
            from myst_parser.parsers.mdit import create_md_parser

            _PARSER = create_md_parser(MdParserConfig(enable_extensions={"colon_fence", "dollarmath", "amsmath"}),
                                       RendererHTML)
        except ImportError:  # myst-parser missing: markdown-it and the plugin MyST builds on
            from markdown_it import MarkdownIt
            from mdit_py_plugins.colon_fence import colon_fence_plugin

            _PARSER = MarkdownIt("commonmark").use(colon_fence_plugin)
    return _PARSER


def directives(source: str, depth: int = 0) -> list[tuple[str, int]]:
    """Every directive MyST would run in ``source``, as (lower-case name, depth), in order.

    Depth 0 is a directive at the top level of the cell; deeper ones sit in a quote, a
    list item or another directive's content. MyST matches directive names without regard
    to case, reads backtick, tilde and colon fences of three or more characters indented up
    to three spaces, and parses most directives' content as MyST again, so this does too.
    Inside ``{eval-rst}``, reStructuredText directives (``.. solution::``) count, one level down.
    """
    found: list[tuple[str, int]] = []
    if depth > 20:
        return found
    for token in _parser().parse(source):
        if token.type not in ("fence", "colon_fence"):
            continue
        info = (token.info or "").strip().split(maxsplit=1)
        word = info[0] if info else ""
        if not (word.startswith("{") and word.endswith("}")):
            continue
        name = word[1:-1].lower()
        level = depth + (token.level > 0)
        found.append((name, level))
        if name == "eval-rst":
            found += [(m.group("name").lower(), level + 1) for m in _RST_DIRECTIVE.finditer(token.content)]
        elif name not in _LITERAL_DIRECTIVES:
            found += directives(token.content, level + 1)
    return found
