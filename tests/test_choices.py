"""Constrained choice as pure logic: the token automaton and free-text matching."""

import pytest

from llm4tag.engines.choices import ChoiceAutomaton, match_choices

END = 0


def word_tokenizer():
    """A deterministic toy tokenizer: one id per word piece, separators as their own tokens."""
    vocab: dict[str, int] = {}

    def encode(text: str) -> list[int]:
        ids = []
        for piece in text.replace(",", " , ").split():
            ids.append(vocab.setdefault(piece, len(vocab) + 1))
        return ids

    return encode, vocab


def run(automaton: ChoiceAutomaton, preference: list[int], limit: int = 40) -> list[int]:
    """Greedy decoding where the 'model' prefers tokens in the order given, masked by the automaton."""
    out: list[int] = []
    for _ in range(limit):
        allowed = automaton.allowed(out)
        pick = next((t for t in preference if t in allowed), allowed[0])
        out.append(pick)
        if pick == END:
            break
    return out


def test_single_choice_only_yields_whole_choices():
    encode, vocab = word_tokenizer()
    automaton = ChoiceAutomaton(["card arrival", "card delivery estimate", "exchange rate"], encode, [END])
    assert sorted(automaton.allowed([])) == sorted({vocab["card"], vocab["exchange"]})
    # After "card" only the two continuations are possible; ending is not.
    assert sorted(automaton.allowed([vocab["card"]])) == sorted({vocab["arrival"], vocab["delivery"]})
    out = run(automaton, [vocab["card"], vocab["delivery"], vocab["estimate"], vocab["rate"], END])
    assert automaton.parse(out) == ["card delivery estimate"]
    # A completed single choice can only end.
    assert automaton.allowed([vocab["exchange"], vocab["rate"]]) == [END]


def test_multi_choice_distinct_and_capped():
    encode, vocab = word_tokenizer()
    choices = ["use::editing", "role::program", "interface::x11", "works-with::text"]
    automaton = ChoiceAutomaton(choices, encode, [END], max_choices=2)
    comma = vocab.setdefault(",", len(vocab) + 1)
    first = encode("role::program")
    # The model would like to repeat role::program forever; the automaton forbids repeats.
    out = run(automaton, [*first, comma, *first, *encode("use::editing"), END])
    assert automaton.parse(out) == ["role::program", "use::editing"]
    # Two choices made: only the end is allowed now.
    assert automaton.allowed(out[:-1]) == [END]


def test_prefix_choice_can_end_or_continue():
    encode, vocab = word_tokenizer()
    automaton = ChoiceAutomaton(["card", "card payment"], encode, [END])
    allowed = automaton.allowed([vocab["card"]])
    assert END in allowed and vocab["payment"] in allowed
    assert automaton.parse([vocab["card"], END]) == ["card"]
    assert automaton.parse([vocab["card"], vocab["payment"], END]) == ["card payment"]


def test_tokens_outside_the_language_are_rejected():
    encode, vocab = word_tokenizer()
    automaton = ChoiceAutomaton(["alpha beta"], encode, [END])
    encode("gamma")
    with pytest.raises(ValueError, match="outside the choice language"):
        automaton.parse([vocab["gamma"]])


def test_bad_requests():
    encode, _ = word_tokenizer()
    with pytest.raises(ValueError):
        ChoiceAutomaton([], encode, [END])
    with pytest.raises(ValueError):
        ChoiceAutomaton(["a"], encode, [END], max_choices=0)


CHOICES = [
    "card arrival",
    "card payment",
    "card payment fee charged",
    "exchange rate",
    "devel::lang:c++",
    "c",
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card arrival", ["card arrival"]),
        ("Card_Arrival", ["card arrival"]),
        ('Tag: "card arrival".', ["card arrival"]),
        ("The most relevant tag is **exchange rate** because the user asks about rates.", ["exchange rate"]),
        ("- card payment fee charged\n- exchange rate", ["card payment fee charged", "exchange rate"]),
        ("1. exchange rate\n2. card arrival", ["exchange rate", "card arrival"]),
        ("devel::lang:c++, card payment", ["devel::lang:c++", "card payment"]),
        ("card payments are not a tag; nor is arrival", []),
        ("I cannot decide.", []),
        ("", []),
    ],
)
def test_match_choices_on_messy_outputs(text, expected):
    assert match_choices(text, CHOICES, max_choices=5) == expected


def test_match_choices_respects_max_and_never_invents():
    found = match_choices("exchange rate, card arrival, card payment, refund", CHOICES, max_choices=2)
    assert found == ["exchange rate", "card arrival"]
    assert set(match_choices("refund please, top up", CHOICES, 5)) <= set(CHOICES)
