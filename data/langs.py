"""Language codes of the pipeline (docs/pipeline.md).

The order of ``LANGS`` is the order of language rows everywhere: ``0 en, 1 de-en, 2 ru-en, 3 de,
4 ru, 5 fr``. ``de-en`` and ``ru-en`` are English back-translated through German and Russian.
"""

from __future__ import annotations

LANGS: tuple[str, ...] = ("en", "de-en", "ru-en", "de", "ru", "fr")


def parse_language(value: str | int) -> str:
    """Return the language code for a code (``"de"``) or its number (``3`` or ``"3"``).

    Raises:
        ValueError: naming the accepted values when ``value`` is neither.
    """
    text = str(value).strip()
    if text in LANGS:
        return text
    if text.isdigit() and int(text) < len(LANGS):
        return LANGS[int(text)]
    choices = ", ".join(f"{i} {code}" for i, code in enumerate(LANGS))
    raise ValueError(f"unknown language {value!r}; use a code or its number: {choices}")


def layer1_name(lang: str) -> str:
    """File name of the layer1 file holding ``lang`` (``layer1.json`` for English)."""
    lang = parse_language(lang)
    return "layer1.json" if lang == "en" else f"layer1_{lang}.json"
