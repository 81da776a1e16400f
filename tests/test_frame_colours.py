"""The tool that brings chapter 3's colour words in line with the frame axes' new colours
(geoattn.devtools.frame_colours): only prose and figure metadata change, and only once."""
import shutil

import nbformat

from geoattn.devtools import frame_colours


def test_it_rewrites_only_words_and_only_once(tmp_path):
    copy = tmp_path / "ch3.ipynb"
    shutil.copy(frame_colours.CHAPTER, copy)
    before = nbformat.read(copy, as_version=4)
    frame_colours.rewrite(copy)
    once = copy.read_bytes()
    assert frame_colours.rewrite(copy) == [] and copy.read_bytes() == once
    after = nbformat.read(copy, as_version=4)
    for old, new in zip(before.cells, after.cells):
        if old.cell_type == "code":
            assert old.source == new.source and old.outputs == new.outputs
    text = "".join(c.source + str(c.metadata) for c in after.cells)
    for old, _ in frame_colours.REPLACEMENTS:
        assert old not in text
