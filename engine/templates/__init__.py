"""Email templates: sandboxed Jinja2, front matter, locale variants, CSS inlined once, a text part.

The only package that imports jinja2 (premailer only in ``inline``). A ``TemplateSet``
prepares each template once and caches it:

1. the file's YAML front matter gives ``subject`` (required) and ``preheader``
   (``frontmatter``);
2. ``{% extends %}`` and literal ``{% include %}`` are flattened into one source,
   so that premailer sees the whole document (the styles live in the layout) (``flatten``);
3. Jinja syntax is swapped for inert placeholders, premailer inlines the CSS,
   the placeholders are swapped back: one inlining per template, never per message
   (``inline``);
4. the same protected source is turned into a text template (links as
   ``text (url)``) unless a hand-written ``NAME.txt`` exists (``text``).

Rendering a message is then two or three plain Jinja renders in the sandbox
(``sandbox``). When one fails, the original (unflattened) template is rendered
again to name the file and line where the author made the mistake (``template_set``).
"""

from engine.config import LOCALES
from engine.templates.flatten import MAX_INCLUDE_DEPTH
from engine.templates.frontmatter import (
    FRONT_MATTER_KEYS,
    FrontMatter,
    TemplateLoader,
    split_front_matter,
)
from engine.templates.inline import inline_css
from engine.templates.limits import (
    DEFAULT_LIMITS,
    MAX_INT_BITS,
    MAX_OUTPUT,
    MAX_RANGE_ITEMS,
    MAX_SECONDS,
    MAX_STEPS,
    MAX_STRING,
    Limits,
)
from engine.templates.sandbox import make_env
from engine.templates.template_set import (
    SHARED_DIRS,
    EmailTemplate,
    RenderedTemplate,
    TemplateSet,
    shared_template_set,
)
from engine.templates.text import html_to_text, tidy_text

# The names the benchmark used when this was one module.
_Loader = TemplateLoader
_make_env = make_env

__all__ = [
    "DEFAULT_LIMITS",
    "FRONT_MATTER_KEYS",
    "LOCALES",
    "MAX_INCLUDE_DEPTH",
    "MAX_INT_BITS",
    "MAX_OUTPUT",
    "MAX_RANGE_ITEMS",
    "MAX_SECONDS",
    "MAX_STEPS",
    "MAX_STRING",
    "SHARED_DIRS",
    "EmailTemplate",
    "FrontMatter",
    "Limits",
    "RenderedTemplate",
    "TemplateLoader",
    "TemplateSet",
    "html_to_text",
    "inline_css",
    "make_env",
    "shared_template_set",
    "split_front_matter",
    "tidy_text",
]
