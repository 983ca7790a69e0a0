import pytest

from adapters.wikitext import load_wikitext2, split_articles


def test_wikitext2_split_by_article():
    data = load_wikitext2()
    assert data.split_unit == "characters"
    assert data.eval_articles > 0 and data.calibration_articles > 0
    assert data.eval_text.startswith(" = ") and data.calibration_text.startswith(" = ")
    assert "\r" not in data.eval_text
    total = len(data.eval_text) + len(data.calibration_text)
    assert 0.75 <= len(data.eval_text) / total < 0.8
    with pytest.raises(ValueError, match="eval_fraction"):
        load_wikitext2(eval_fraction=1.0)


def test_articles_start_at_single_equals_titles():
    parts = split_articles(" = A = \n x\n = = B = = \n y\n = C = \n z\n")
    assert [p.splitlines()[0] for p in parts] == [" = A = ", " = C = "]
