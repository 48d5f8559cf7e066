"""`recxplain.text`: the repeated-sentence rule behind `SamplingConfig.stop_on_repeat`."""

from __future__ import annotations

from recxplain.text import cut_at_repeated_sentence, sentence_key

AIR_FORCE_ONE = 'The user recommends the movie "Air Force One" (Action, Thriller) to a user.'


def test_a_loop_is_cut_to_its_first_sentence():
    loop = f"{AIR_FORCE_ONE} {AIR_FORCE_ONE} The user ..."
    assert cut_at_repeated_sentence(loop) == AIR_FORCE_ONE
    # the repeat that ends the answer counts too, and a repeat is recognised through case,
    # punctuation and spacing
    assert cut_at_repeated_sentence(f"{AIR_FORCE_ONE}\n\n{AIR_FORCE_ONE}") == AIR_FORCE_ONE
    shouted = 'THE USER recommends the movie Air Force One - Action / Thriller - to a user!'
    assert cut_at_repeated_sentence(f"It is a thriller. {AIR_FORCE_ONE} Also: {shouted}") \
        == f"It is a thriller. {AIR_FORCE_ONE} Also: {shouted}"  # "Also:" makes it another sentence
    assert cut_at_repeated_sentence(f"It is a thriller. {AIR_FORCE_ONE}  {shouted} More.") \
        == f"It is a thriller. {AIR_FORCE_ONE}"
    assert sentence_key(shouted) == sentence_key(AIR_FORCE_ONE) == \
        "the user recommends the movie air force one action thriller to a user"


def test_text_without_repeats_is_unchanged():
    text = ('We recommend "Heat" (Crime, 1995). You rated "Casino" 5/5! Both star Robert De Niro. '
            "Is it for you? We think so.")
    assert cut_at_repeated_sentence(text) == text
    assert cut_at_repeated_sentence("") == ""


def test_short_repeats_are_not_loops():
    assert cut_at_repeated_sentence("Yes. Yes.") == "Yes. Yes."
    text = "Watch it. Watch it. It is a heist movie."
    assert cut_at_repeated_sentence(text) == text
    # a sentence ends at whitespace after a terminator, not at a decimal point
    assert cut_at_repeated_sentence("Rated 3.5 by you. Rated 3.9 by you.") == "Rated 3.5 by you. Rated 3.9 by you."


def test_an_unfinished_answer_compares_complete_sentences_only():
    """While an answer is written, its last piece may still grow: it is not compared yet."""
    assert cut_at_repeated_sentence("You rated it 3. You rated it 3.", finished=False) \
        == "You rated it 3. You rated it 3."
    assert cut_at_repeated_sentence("You rated it 3. You rated it 3. ", finished=False) == "You rated it 3."
    whole = "You rated it 3. You rated it 3.5 stars."
    assert cut_at_repeated_sentence(whole) == whole
