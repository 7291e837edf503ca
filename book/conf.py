"""Sphinx configuration of the book: the executed notebooks rendered with MyST-NB.

``tools/build_book.py`` (``make docs``) executes the notebooks, prepares copies of them and the
index page in a source folder under ``build/``, then runs ``sphinx-build -c book`` on it: this
file is the configuration, the source folder is made fresh each time.

Everything a page loads is local, so the book reads offline: MathJax 2 comes from the
``jupyter-server-mathjax`` package (copied to ``_static/mathjax`` by the build script), the
widgets' scripts (a CDN by default) are left out, and the theme's fonts are its own files.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.application import Sphinx

project = "gradbook"

extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
master_doc = "index"

# -- the notebooks: already executed by papermill, shown as they ran -------------------------------
nb_execution_mode = "off"
nb_ipywidgets_js: dict[str, dict[str, str]] = {}  # the default loads require.js from a CDN
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True  # $$…$$ inside a paragraph is still display math
myst_heading_anchors = 3

# -- equations: MathJax 2 from _static/mathjax, STIX fonts, nothing from the network ---------------
# A relative mathjax_path is relative to _static. local/stix is the build script's config file.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/stix"
myst_update_mathjax = False  # it would write a MathJax 3 configuration
# Sphinx writes math as \(…\) and \[…\] inside elements of class "math"; only those are typeset,
# so a backslash-parenthesis in code or in an output stays as it is.
mathjax2_config = {
    "tex2jax": {
        "inlineMath": [["\\(", "\\)"]],
        "displayMath": [["\\[", "\\]"]],
        "processEscapes": False,
        "processEnvironments": False,
        "ignoreClass": "bd-article|tex2jax_ignore|mathjax_ignore",
        "processClass": "math|tex2jax_process",
    },
    "TeX": {"equationNumbers": {"autoNumber": "none"}},  # the notebooks' own \tag{1.1}
}

# -- pages -----------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "gradbook: the notebooks"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_show_sourcelink = False
html_last_updated_fmt = None
# Search summaries are fetched from the pages, which a browser refuses for file:// URLs: the
# results list the pages without them, offline and served alike.
html_show_search_summary = False
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_prev_next": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
    "search_bar_text": "Search the notebooks…",
    "navbar_persistent": [],  # one search field, in the sidebar
    "footer_content_items": [],
}


def own_tags(app: Sphinx, doctree: nodes.document) -> None:
    r"""Equations keep the numbers their ``\tag`` gives them, and nothing breaks them.

    * Sphinx wraps a displayed equation that holds ``\\`` in ``\begin{split}…\end{split}``
      (for its line breaks), and MathJax refuses a ``\tag`` inside a split: an equation with a
      ``\tag`` (its ``\\`` inside a matrix) is written as ``\[…\]``, as it is;
    * MyST numbers an ``amsmath`` block (``\begin{align}`` …) itself: not one with ``\tag``s.
    """
    for node in doctree.findall(nodes.math_block):
        text = node.astext()
        if "\\tag" not in text:
            continue
        if "amsmath" in node.get("classes", []):
            node["number"] = None
        elif "\\\\" in text and not node.get("nowrap"):
            node.children = [nodes.Text(f"\\[{text}\\]")]
            node["nowrap"] = True


def setup(app: Sphinx) -> None:
    app.connect("doctree-read", own_tags)
