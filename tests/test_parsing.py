"""Response, label, gene-list and CellPuzzles parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellduality.tasks.parsing import (
    LabelMatcher,
    labels_equal,
    match_label,
    normalize_label,
    parse_cellpuzzles_answer,
    parse_gene_list,
    parse_response,
)

# ---------------------------------------------------------------- responses

@pytest.mark.parametrize(
    ("text", "think", "answer"),
    [
        ("<think>r</think><answer>B cell</answer>", "r", "B cell"),
        ("<think>\n r \n</think>\n\n<answer>  B cell \n</answer>\n", "r", "B cell"),
        ("<THINK>r</Think><ANSWER>B cell</answer>", "r", "B cell"),
        ("< think >r</ think ><answer>B cell</ answer >", "r", "B cell"),
        ("assistant\nSure. <think>r</think><answer>B cell</answer>", "r", "B cell"),
        ("<think></think><answer>x</answer>", "", "x"),
    ],
)
def test_valid_responses(text: str, think: str, answer: str) -> None:
    parsed = parse_response(text)
    assert parsed.format_ok, parsed.error
    assert (parsed.think, parsed.answer, parsed.error) == (think, answer, None)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("B cell", "missing <think>"),
        ("<think>r</think>B cell", "missing <answer>"),
        ("<think>r</think><answer>B cell", "unclosed <answer>"),
        ("<think>r ... and then the model ran out of tok", "unclosed <think>"),
        ("<think>r</think><answer>  </answer>", "empty answer"),
        ("<answer>B</answer><think>r</think>", "out of order"),
        ("<think>a</think><think>b</think><answer>B</answer>", "more than one <think>"),
        ("<think>r</think><answer>A</answer><answer>B</answer>", "more than one <answer>"),
        ("<think>r</think> so: <answer>B</answer>", "between"),
        ("<think>r</think><answer>B</answer> trailing words", "after </answer>"),
        ("<think>r<answer>B</answer></think>", "out of order"),
        ("", "missing <think>"),
    ],
)
def test_malformed_responses(text: str, error: str) -> None:
    parsed = parse_response(text)
    assert not parsed.format_ok
    assert parsed.answer is None and parsed.think is None
    assert error in (parsed.error or "")


@pytest.mark.parametrize("value", [None, 3, b"<think>", ["<think>"]])
def test_non_text_is_a_format_error(value: object) -> None:
    parsed = parse_response(value)
    assert not parsed.format_ok and "not text" in (parsed.error or "")


def test_strict_mode_is_cell_o1s_check() -> None:
    assert parse_response("<think>r</think>\n<answer>A | B</answer>", strict=True).answer == "A | B"
    for text in (
        "<think>r</think><answer>A | B</answer>",  # needs exactly one newline between
        " <think>r</think>\n<answer>A | B</answer>",  # no leading text
        "<THINK>r</THINK>\n<ANSWER>A | B</ANSWER>",  # exact case
        "<think>r</think>\n<answer>A | B</answer>\n\n",  # nothing after (Python's $ allows one newline)
    ):
        assert not parse_response(text, strict=True).format_ok, text
        assert parse_response(text).format_ok, text  # the tolerant mode accepts all of them
    assert not parse_response("<think>r</think>\n<answer>A</answer> x", strict=True).format_ok
    assert not parse_response("<think>r</think>\n<answer> </answer>", strict=True).format_ok


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_never_raises(text: str) -> None:
    for strict in (False, True):
        parsed = parse_response(text, strict=strict)
        assert parsed.format_ok == (parsed.error is None)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=30),
       st.text(alphabet=st.characters(blacklist_characters="<>"), min_size=1, max_size=30))
def test_roundtrip(think: str, answer: str) -> None:
    parsed = parse_response(f"<think>{think}</think>\n<answer>{answer}</answer>")
    if answer.strip():
        assert parsed.format_ok and parsed.answer == answer.strip() and parsed.think == think.strip()
    else:
        assert not parsed.format_ok


# ---------------------------------------------------------------- labels

ALLOWED = ["CD14 Monocytes", "B cells", "CD8+ T cells", "CD8- T cells", "NK cells"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("CD14 Monocytes", "CD14 Monocytes"),
        ("  cd14   monocytes. ", "CD14 Monocytes"),
        ("**B cells**", "B cells"),
        ("B_cells", "B cells"),
        ("b-cells", "B cells"),
        ("CD14+ monocyte", "CD14 Monocytes"),  # synonym
        ("cd8+ t cells", "CD8+ T cells"),
        ("CD8- T cells", "CD8- T cells"),  # '+' vs '-' stay distinct
        ("dendritic cells", None),
        ("B cells or NK cells", None),
        ("", None),
        (None, None),
    ],
)
def test_match_label(answer: str | None, expected: str | None) -> None:
    assert match_label(answer, ALLOWED, {"CD14+ Monocyte": "CD14 Monocytes"}) == expected


def test_synonyms_to_labels_outside_the_allowed_set_are_ignored() -> None:
    assert match_label("macrophage", ["B cells"], {"macrophage": "Macrophages"}) is None
    assert match_label("macrophage", None, {"macrophage": "Macrophages"}) == "Macrophages"
    assert match_label("  Sensitive ", None) == "Sensitive"


def test_ambiguous_allowed_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="same after normalisation"):
        LabelMatcher(["T cell", "t-cell"])


def test_normalize_and_equal() -> None:
    assert normalize_label(" CD4+/CD25  T_Reg. ") == "cd4+ cd25 t reg"
    assert labels_equal("cd14 monocytes", "CD14 Monocytes")
    assert labels_equal("cd14+ monocyte", "CD14 Monocytes", {"cd14+ monocyte": "CD14 Monocytes"})
    assert not labels_equal("B cells", "CD14 Monocytes")
    assert not labels_equal(None, "B cells")


# ---------------------------------------------------------------- gene lists

@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("CD3D, CD3E, IL7R", ["CD3D", "CD3E", "IL7R"]),
        ("cd3d cd3e\nil7r", ["CD3D", "CD3E", "IL7R"]),
        ("CD3D, CD3D, cd3d, IL7R", ["CD3D", "IL7R"]),
        ("1. CD3D\n2. CD3E\n3) IL7R", ["CD3D", "CD3E", "IL7R"]),
        ("`HLA-DRA`; (MT-CO1), RP11-34P13.7.", ["HLA-DRA", "MT-CO1", "RP11-34P13.7"]),
        ("CD3D and CD3E | the IL7R gene", ["CD3D", "CD3E", "IL7R"]),
        ("CD3D, ???, 42, ♥, CD3E", ["CD3D", "CD3E"]),
        ("", []),
        (None, []),
    ],
)
def test_parse_gene_list(answer: str | None, expected: list[str]) -> None:
    assert parse_gene_list(answer) == expected


def test_parse_gene_list_vocabulary() -> None:
    assert parse_gene_list("CD3D FOO cd3e", vocabulary=["cd3d", "CD3E"]) == ["CD3D", "CD3E"]


# ---------------------------------------------------------------- CellPuzzles

CANDS = ["naive B cell", "plasmablast", "NK cell"]


def test_puzzle_valid() -> None:
    res = parse_cellpuzzles_answer("NK cell | Naive B cell |plasmablast", CANDS)
    assert res.format_ok and res.labels == ("NK cell", "naive B cell", "plasmablast")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("NK cell | naive B cell", "expected 3"),
        ("NK cell | naive B cell | plasmablast | NK cell", "expected 3"),
        ("NK cell | naive B cell | NK cell", "more than one cell"),
        ("NK cell | naive B cell | T cell", "not one of the candidate"),
        ("NK cell, naive B cell, plasmablast", "expected 3"),
        (None, "no answer"),
    ],
)
def test_puzzle_invalid(answer: str | None, error: str) -> None:
    res = parse_cellpuzzles_answer(answer, CANDS)
    assert not res.format_ok and res.labels is None and error in (res.error or "")


def test_puzzle_explicit_n_and_synonyms() -> None:
    res = parse_cellpuzzles_answer("NK | plasmablast", ["NK cell", "plasmablast"], 2, {"NK": "NK cell"})
    assert res.labels == ("NK cell", "plasmablast")
    assert not parse_cellpuzzles_answer("NK cell | plasmablast", ["NK cell", "plasmablast"], 3).format_ok


# adversarial inputs of about n * 1 MB: a regex that backtracks would take time quadratic in their length
ADVERSARIAL = {
    "lt + spaces": lambda n: "<" + " " * int(1_000_000 * n) + "x",
    "lt + newlines + slash": lambda n: "<" + "\n" * int(500_000 * n) + "/" + "\t" * int(500_000 * n),
    "many lt": lambda n: "< " * int(500_000 * n),
    "unclosed think": lambda n: "<think>" + "a <" * int(330_000 * n),
    "nested tags": lambda n: "<think>" * int(70_000 * n) + "<answer>" * int(60_000 * n),
    "closing tags": lambda n: "</ answer  >" * int(80_000 * n),
    "long answer": lambda n: "<think></think>\n<answer>" + "CD3D, " * int(160_000 * n) + "</answer>",
}


def _parse_seconds(text: str, strict: bool) -> float:
    """Best of 3 (a busy machine can pause any single run) of parsing ``text`` and its answer."""
    import time

    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        parsed = parse_response(text, strict=strict)
        if parsed.format_ok:
            parse_gene_list(parsed.answer)
            parse_cellpuzzles_answer(parsed.answer, ["A", "B"])
        seconds.append(time.perf_counter() - start)
    return min(seconds)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_parsing_is_linear_on_adversarial_megabyte_inputs(name: str) -> None:
    """Ten times the input takes about ten times as long (a quadratic parser: a hundred), whatever the machine's
    speed; and a megabyte never takes seconds."""
    big, small = ADVERSARIAL[name](1.0), ADVERSARIAL[name](0.1)
    assert len(big) >= 900_000
    for strict in (False, True):
        slow, fast = _parse_seconds(big, strict), _parse_seconds(small, strict)
        assert slow < 5.0 and slow < 30 * fast + 0.05, (slow, fast)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["<", "/", " ", "\n", "think", "answer", ">", "x", "<think>", "</answer>"]),
                min_size=1, max_size=60), st.integers(min_value=1, max_value=20_000))
def test_parsing_time_does_not_grow_with_repeats(pieces: list[str], repeat: int) -> None:
    import time

    text = "".join(pieces) * repeat
    seconds = []
    for _ in range(3):  # best of 3: a busy machine can pause any single run
        start = time.perf_counter()
        parse_response(text)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 0.2


def test_invisible_characters_do_not_break_a_match() -> None:
    assert match_label("CD19+ B\u200b", ["CD19+ B", "CD56+ NK"]) == "CD19+ B"
    assert match_label("\ufeffCD56+\u200d NK", ["CD19+ B", "CD56+ NK"]) == "CD56+ NK"
