"""Sphinx configuration of the sklearn-metarefine documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The build is offline: nothing is fetched from the network. Links to the
documentation of NumPy, scikit-learn, PyTorch, ... (intersphinx) are opt-in,
because they download inventories: set ``METAREFINE_DOCS_INTERSPHINX=1``.
Set ``METAREFINE_DOCS_PLOT_GALLERY=0`` to build without running the examples.
"""

import os
import re
from datetime import date

import torch
from threadpoolctl import threadpool_limits

import sklearn_metarefine

# -- Project -----------------------------------------------------------------

project = "sklearn-metarefine"
author = "sklearn-metarefine developers"
copyright = f"{date.today().year}, {author}"
release = sklearn_metarefine.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    # written by sphinx-gallery next to the sources, not part of the docs tree
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.md5",
    "auto_examples/*.pickle",
    "auto_examples/*.codeobj.json",
]
root_doc = "index"
# `name` in a docstring is code, as in scikit-learn's documentation.
default_role = "literal"
pygments_style = "sphinx"

# -- autodoc, autosummary, numpydoc ------------------------------------------

# The stub pages of the API reference are generated at build time into the
# git-ignored docs/gen_modules folder (see api.rst and _templates/autosummary).
autosummary_generate = True
# Members a class inherits from this package's mixins (PatchCoreDetector's
# predict, all of MAMLFlowDetector's) are shown; those of scikit-learn's base
# classes are not: their docstrings link to scikit-learn's own pages.
autodoc_default_options = {
    "members": True,
    "inherited-members": (
        "BaseEstimator,OutlierMixin,TransformerMixin,MetaEstimatorMixin,"
        "_MetadataRequester,_SetOutputMixin,BaseException,object"
    ),
}
autodoc_typehints = "none"
autodoc_member_order = "groupwise"

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# numpydoc "References" sections list the works a class builds on, whether or
# not the summary cites them inline with [1]_; an uncited entry is not a defect.
suppress_warnings = ["ref.citation"]

# Docstrings name fitted attributes in shapes and prose without backticks,
# e.g. "shape (n_samples, n_features_in_)". In reStructuredText a word
# ending in "_" is a hyperlink reference, and docutils fails on the unknown
# target "n_features_in". Escape such trailing underscores outside inline
# literals, roles, doctests and literal blocks, so that they render as typed.
_TRAILING_UNDERSCORE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*[A-Za-z0-9])_(?![\w`])")
_INLINE_MARKUP = re.compile(r"(``.*?``|`[^`]*`_{0,2})")


def escape_attribute_names(line):
    """Escape ``word_`` in the plain-text parts of one line of reST."""
    parts = _INLINE_MARKUP.split(line)
    parts[::2] = [_TRAILING_UNDERSCORE.sub(r"\1\\_", part) for part in parts[::2]]
    return "".join(parts)


def _escape_docstring(app, what, name, obj, options, lines):
    literal_indent = None
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                continue
            literal_indent = None
        if stripped.startswith((">>>", "...")):
            continue
        lines[i] = escape_attribute_names(line)
        if stripped.endswith("::") and not stripped.startswith(".."):
            literal_indent = indent


def setup(app):
    app.connect("autodoc-process-docstring", _escape_docstring)


# -- Optional links to other projects' documentation -------------------------

if os.environ.get("METAREFINE_DOCS_INTERSPHINX", "0") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "joblib": ("https://joblib.readthedocs.io/en/stable", None),
        "matplotlib": ("https://matplotlib.org/stable", None),
        "skorch": ("https://skorch.readthedocs.io/en/stable", None),
    }

# Every cross-reference must resolve (the tests build with -W): a broken link
# to this package's own objects is an error. Other projects' objects resolve
# only with intersphinx, which is opt-in above, so theirs are let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(sklearn|numpy|scipy|torch|tempfile|joblib|skorch)(\..*)?"),
]

# -- sphinx-gallery ----------------------------------------------------------

# The examples promise one CPU core. Their models are tiny: more threads buy
# nothing, and on a busy machine OpenMP threads spin-waiting for each other
# make them several times slower.
torch.set_num_threads(1)
threadpool_limits(1)

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "plot_gallery": os.environ.get("METAREFINE_DOCS_PLOT_GALLERY", "True"),
    "doc_module": ("sklearn_metarefine",),
    "backreferences_dir": os.path.join("gen_modules", "backreferences"),
    "reference_url": {"sklearn_metarefine": None},
    "image_scrapers": ("matplotlib",),
    "capture_repr": ("_repr_html_", "__repr__"),
    "min_reported_time": 0,
    "remove_config_comments": True,
    "show_memory": False,
}

# -- HTML --------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-metarefine {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 5,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_context = {"default_mode": "light"}
