"""griffe extension for the API reference: optbench's docstrings are plain text, not HTML, so `<time>` in
"default outputs/<time>" must show as written instead of vanishing as an unknown HTML tag."""

import html

import griffe


class PlainTextDocstrings(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:  # griffe >= 1.14: every object, once loaded
        if obj.docstring is not None and "<" in obj.docstring.value:
            parts = obj.docstring.value.split("`")  # odd parts are `code`, where Markdown shows < as it is
            obj.docstring.value = "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))
