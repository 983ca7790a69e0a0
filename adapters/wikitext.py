"""The bundled WikiText-2 test split, divided by article into evaluation and calibration text.

The WikiText-2 file shipped in ``adapters/data`` is the raw *test* split only (see
``adapters/data/README.md``).  The project's protocol splits it by article: the articles that
hold the first 75% of the tokens are the evaluation text, the remaining articles are the
calibration text, so evaluation and calibration never overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["WikiText2", "load_wikitext2", "split_articles"]

_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")

@dataclass(frozen=True)
class WikiText2:
    """The bundled WikiText-2 test split, divided by article into evaluation and calibration text.

    Attributes
    ----------
    eval_text : str
        Articles holding the first 75% (``eval_fraction``) of the tokens.
    calibration_text : str
        The remaining articles.
    eval_articles, calibration_articles : int
        Number of articles on each side.
    split_unit : str
        ``"tokens"`` when a tokenizer measured the split, ``"characters"`` otherwise.
    """

    eval_text: str
    calibration_text: str
    eval_articles: int
    calibration_articles: int
    split_unit: str


def _read_raw() -> str:
    path = resources.files("adapters").joinpath("data").joinpath("wiki.test.raw")
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def split_articles(text: str, /) -> list[str]:
    """Cut a WikiText file into articles (each begins with a `` = Title = `` line)."""
    articles: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _ARTICLE_TITLE.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["".join(a) for a in articles]


def load_wikitext2(*, tokenizer=None, eval_fraction: float = 0.75) -> WikiText2:
    """Load the bundled WikiText-2 test split and divide it by article.

    Parameters
    ----------
    tokenizer : transformers tokenizer, optional
        Used to measure article lengths in tokens (the documented protocol).  Without it the
        split is measured in characters, which lands on a nearby but not identical article.
    eval_fraction : float, default 0.75
        Share of the tokens that goes to evaluation; the split falls on the first article
        boundary at or after this share.

    Returns
    -------
    WikiText2
        Evaluation and calibration texts (CRLF normalised to LF).

    Raises
    ------
    ValueError
        If ``eval_fraction`` is not in (0, 1).

    Notes
    -----
    Articles begin with a line `` = Title = `` (one ``=`` on each side; section headings use
    two or more).  The file lacks the blank lines of the canonical release, so perplexities are
    close to but not identical with published WikiText-2 figures.

    References
    ----------
    Merity, Xiong, Bradbury & Socher (2016), "Pointer Sentinel Mixture Models", arXiv 1609.07843.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction!r}; the protocol uses 0.75")
    articles = split_articles(_read_raw())
    if tokenizer is None:
        sizes = [len(a) for a in articles]
        unit = "characters"
    else:
        sizes = [len(ids) for ids in tokenizer(articles, add_special_tokens=False)["input_ids"]]
        unit = "tokens"
    total = sum(sizes)
    acc = 0
    cut = len(articles)
    for i, s in enumerate(sizes):
        acc += s
        if acc >= eval_fraction * total:
            cut = i + 1
            break
    return WikiText2(
        eval_text="".join(articles[:cut]),
        calibration_text="".join(articles[cut:]),
        eval_articles=cut,
        calibration_articles=len(articles) - cut,
        split_unit=unit,
    )


