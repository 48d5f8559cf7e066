"""The checks of recxplain/checks.py on hand-written explanations: one good and one bad per check.

The same checks label the preference pairs (rubric judge), pick the teacher's best-of-n answer and
grade the evaluation, so each failure a reader would see must be caught here.
"""

from __future__ import annotations

import math

import pytest

from recxplain.checks import (
    Catalogue,
    check_explanation,
    clean_explanation,
    find_technical_terms,
    parse_explanation,
    pick_best,
    repetition,
    title_forms,
)
from recxplain.schemas import Movie, Neighbour, PathEvidence, RatedMovie
from tests.scripted import GENRES, GOOD, TECHNICAL, TITLES, toy_case

CATALOGUE = Catalogue(titles=TITLES, genres=GENRES)


def air_force_one():
    """The case behind the loops quoted in the issue that asked for these checks."""
    return toy_case().model_copy(update={
        "history": [RatedMovie(item_id=50, title="Star Wars", year=1977, genres=["Action", "Sci-Fi"], rating=5,
                               timestamp=1),
                    RatedMovie(item_id=10, title="The Saint", year=1997, genres=["Action", "Thriller"], rating=4,
                               timestamp=2)],
        "item": Movie(item_id=300, title="Air Force One", year=1997, genres=["Action", "Thriller"]),
        "neighbours": [Neighbour(item_id=10, title="The Saint", weight=0.5, rated=4.0),
                       Neighbour(item_id=11, title="Scream", weight=0.4, rated=None)],
        "paths": [PathEvidence(
            pattern="user-movie-similar-movie", steps=[], score=1.0,
            text="You rated Spawn (1997) 5/5; people who liked it also liked Air Force One (1997).",
        )],
        "next_item": None,
    })


# ------------------------------------------------------------------ a good explanation


def test_a_good_explanation_passes_every_check():
    result = check_explanation(toy_case(), GOOD, catalogue=CATALOGUE)
    assert result.passed and result.failed == []
    assert set(result.checks) == {"complete", "length_ok", "no_repetition", "grounded", "consistent_ratings",
                                  "no_technical_terms", "mentions_title", "personal"}
    assert result.specificity == 1.0  # Toy Story, The Lion King, comedy
    assert result.score == 1.0 and result.words == 30 and result.usable
    assert result.faithfulness == 1.0


def test_a_good_explanation_of_the_quoted_case_passes():
    text = ("You rated The Saint 4/5, and people who liked it also liked Air Force One. "
            "Like Spawn, which you rated 5/5, it is an action movie, so it should suit you.")
    result = check_explanation(
        air_force_one(), text, catalogue=Catalogue(titles=["Air Force One", "The Saint", "Spawn"], genres=GENRES)
    )
    assert result.passed, result.failed


# ------------------------------------------------------------------ repetition


def test_the_quoted_loop_is_a_repetition():
    loop = ' '.join(['The user recommends the movie "Air Force One" (Action, Thriller) to a user.'] * 3)
    result = check_explanation(air_force_one(), loop)
    assert not result.no_repetition and not result.usable and not result.passed
    assert result.repeated == "the user recommends the movie air force one action thriller to a user"
    # every claim it makes is true: faithfulness alone cannot see a loop
    assert result.faithfulness == 1.0


def test_repetition_sentences_ngrams_and_long_spans():
    assert repetition("Babe is great. Babe is great. You will love it.") == "babe is great"
    assert repetition("a b c d e a b c d e a b c d") == "a b c d"
    assert repetition("one two three four one two three four five") is None
    # a long span said twice inside different sentences is a loop too
    span = "a great example of how a single movie can have a huge impact"
    assert repetition(f"The Rock is {span}. It is {span}.") is not None
    assert repetition(GOOD) is None
    # a long title named three times (the template explainer's path sentences) is not a loop
    text = ('We recommend "Back to the Future". You rated Alien 5/5; people who liked it also liked Back to the '
            "Future. You rated Heat 4/5; Back to the Future shares an actor with it.")
    assert repetition(text) == "back to the future"
    assert repetition(text, titles=["Back to the Future"]) is None
    case = toy_case().model_copy(update={"item": Movie(item_id=2, title="Back to the Future", year=1985)})
    assert check_explanation(case, text).no_repetition
    # but a clause repeated around a title is (a DPO student's answer): the title counts as one word
    clause = ("You rated Spawn 5/5, and people who liked it also liked Air Force One (1997). It's a great movie, "
              "and people who liked it also liked Air Force One (1997).")
    looped = check_explanation(air_force_one(), clause)
    assert not looped.no_repetition and looped.repeated == "and people who liked it also liked |"


# ------------------------------------------------------------------ claims about the user's ratings


def test_a_rating_of_the_recommended_movie_is_a_false_claim():
    # The arena bundle quoted "you rated The Silence of the Lambs 5/5" for the recommended movie itself.
    result = check_explanation(toy_case(), "You rated Babe 5/5, so you will enjoy watching this warm comedy "
                               "again with Toy Story fans.", catalogue=CATALOGUE)
    assert not result.consistent_ratings and not result.passed
    assert any("recommended to you" in claim for claim in result.false_rating_claims)
    assert result.faithfulness < 1  # a false claim is an unsupported one
    loved = check_explanation(toy_case(), "You loved Babe, and people who liked it also liked Toy Story, "
                              "a comedy you will enjoy.", catalogue=CATALOGUE)
    assert loved.false_rating_claims == ['says you loved "Babe", the movie recommended to you']


def test_recommending_a_movie_other_than_the_recommended_one_is_a_false_claim():
    # A DPO student's second sentence offered a movie from the user's own history:
    # "... You may enjoy E.T. the Extra-Terrestrial 5/5, which is a sci-fi movie."
    again = check_explanation(toy_case(), "You rated Toy Story 5/5, and people who liked it also liked Babe "
                              "(1995). You may enjoy Toy Story 5/5, which is a comedy.", catalogue=CATALOGUE)
    assert not again.consistent_ratings and not again.passed
    assert again.false_rating_claims == ['recommends "Toy Story", which you already rated, instead of "Babe"']
    other = check_explanation(air_force_one(), "You rated Star Wars 5/5, and people who liked it also liked Air "
                              "Force One (1997). You may enjoy Scream, which is a thriller.", catalogue=CATALOGUE)
    assert other.false_rating_claims == ['recommends "Scream" instead of "Air Force One"']
    for text in ("You rated Toy Story 5/5, so you'll love The Lion King, a comedy.",
                 "You rated Toy Story 5/5, so I recommend The Lion King, a comedy."):
        assert not check_explanation(toy_case(), text, catalogue=CATALOGUE).consistent_ratings, text
    # The recommended movie as the object, or another title further on, is no such claim.
    for text in ("You rated Toy Story 5/5, so you will enjoy watching Babe, a comedy.",
                 "You rated Toy Story 5/5, and you will like Babe as much as Toy Story, a comedy.",
                 "You rated Toy Story 5/5, and you will like it as much as Toy Story, a comedy."):
        assert check_explanation(toy_case(), text, catalogue=CATALOGUE).consistent_ratings, text


def test_a_wrong_star_count_and_an_impossible_rating_are_false_claims():
    wrong = check_explanation(toy_case(), "You rated Toy Story 3/5, and people who liked it also liked Babe, "
                              "a warm comedy.", catalogue=CATALOGUE)
    assert wrong.false_rating_claims == ['gives "Toy Story" 3/5; you rated it 5/5']
    impossible = check_explanation(toy_case(), "You rated Toy Story 5/4, and people who liked it also liked "
                                   "Babe, a warm comedy.", catalogue=CATALOGUE)
    assert impossible.false_rating_claims == ["gives a rating of 5/4, outside the 5-star scale"]
    disliked = check_explanation(toy_case(), "You loved Heat, so Babe, a comedy that people who liked Toy "
                                 "Story also liked, is for you.", catalogue=CATALOGUE)
    assert disliked.false_rating_claims == ['says you loved "Heat", which you rated 3/5']


def test_true_rating_claims_pass_and_count_as_supported():
    text = ("You rated Toy Story 5/5 and The Lion King 5 out of 5, and people who liked them also liked "
            "Babe, a warm comedy.")
    result = check_explanation(toy_case(), text, catalogue=CATALOGUE)
    assert result.consistent_ratings and result.false_rating_claims == []
    assert result.supported >= 4 and result.faithfulness == 1.0
    # "you may enjoy X" recommends; it claims nothing about the past
    assert check_explanation(toy_case(), "You may enjoy Babe, a comedy that people who liked Toy Story also "
                             "liked.", catalogue=CATALOGUE).consistent_ratings


def test_a_wrong_year_is_ungrounded():
    result = check_explanation(toy_case(), "You rated Toy Story 5/5, and people who liked it also liked "
                               "Babe (1982), a warm comedy.", catalogue=CATALOGUE)
    assert result.wrong_years == ["Babe (1982; it is from 1995)"] and not result.grounded
    right = check_explanation(toy_case(), "You rated Toy Story 5/5, and people who liked it also liked "
                              "Babe (1995), a warm comedy.", catalogue=CATALOGUE)
    assert right.wrong_years == [] and right.grounded


# ------------------------------------------------------------------ titles, names, genres


def test_titles_and_genres_outside_the_evidence():
    text = ('If you enjoyed Star Wars and the sci-fi adventures of "Space Pigs", Babe is a comedy '
            "that you will love watching tonight with friends.")
    result = check_explanation(toy_case(), text, catalogue=CATALOGUE)
    # Star Wars is the user's NEXT movie: held out, not evidence; "Space Pigs" is invented.
    assert result.unknown_titles == ["Star Wars", "Space Pigs"]
    assert result.unknown_genres == ["Sci-Fi"]  # not "War": that word is inside a title
    assert not result.grounded and result.faithfulness < 1
    western = check_explanation(toy_case(), "Babe is a thrilling western full of action like Heat, which you "
                                "rated; you will enjoy every minute.", catalogue=CATALOGUE)
    assert western.unknown_genres == ["Western"]  # action is Heat's genre: grounded


def test_invented_names_and_careful_title_reading():
    catalogue = Catalogue(titles=[*TITLES, "Chain Reaction", "The Godfather", "The Godfather: Part II"], genres=GENRES)
    text = ("Babe, like Toy Story, was made by directors such as JK Rowling and Martin Balsmoak; When I saw "
            "it, a chain reaction of joy followed, as in The Godfather.")
    result = check_explanation(toy_case(), text, catalogue=catalogue)
    assert result.unknown_names == ["jk rowling", "martin balsmoak"]  # not "when i", not "babe"
    assert result.unknown_titles == ["The Godfather"]  # not "Chain Reaction" (lowercase), not "Part II"
    # a copied worked example (titles from after MovieLens' time) is an invented name
    copied = check_explanation(toy_case(), "You rated The Dark Knight 5/5, and people who liked it also liked "
                               "Babe, a comedy.", catalogue=catalogue)
    assert copied.unknown_names == ["the dark knight"] and not copied.grounded
    case = toy_case()
    case.paths[0].text = "You rated Toy Story 5/5; it shares the director John Lasseter with Babe."
    assert check_explanation(case, "Babe shares the director John Lasseter with Toy Story, which you loved; "
                             "give it a try tonight.", catalogue=catalogue).grounded
    assert title_forms("Godfather, The (1972)") == {"godfather", "the godfather", "godfather the"}


def movielens_case(paths: list[str] | None = None):
    """A case with MovieLens titles: years, a moved article ("Usual Suspects, The")."""
    return toy_case().model_copy(update={
        "history": [RatedMovie(item_id=1, title="Star Wars (1977)", year=1977, genres=["Action", "Sci-Fi"], rating=5,
                               timestamp=1),
                    RatedMovie(item_id=2, title="Usual Suspects, The (1995)", year=1995, genres=["Crime", "Thriller"],
                               rating=4, timestamp=2)],
        "item": Movie(item_id=3, title="Return of the Jedi (1983)", year=1983, genres=["Action", "Sci-Fi"]),
        "neighbours": [Neighbour(item_id=1, title="Star Wars (1977)", weight=0.8, rated=5.0)],
        "paths": [PathEvidence(pattern="user-rated-movie-director-movie", steps=[], score=0.7, text=text)
                  for text in (paths or ["You rated Star Wars 5/5; it shares a director with Return of the Jedi"])],
        "next_item": None,
    })


ML_CATALOGUE = Catalogue(titles=["Star Wars (1977)", "Usual Suspects, The (1995)", "Return of the Jedi (1983)",
                                 "Fargo (1996)", "Heat (1995)", "Big Blue, The (Grand bleu, Le) (1988)",
                                 "City of Lost Children, The (Cité des enfants perdus, La) (1995)"],
                         genres=["Action", "Adventure", "Crime", "Sci-Fi", "Thriller"])


def test_movielens_titles_as_prose_writes_them():
    # "Usual Suspects, The (1995)" is "The Usual Suspects" (or "Usual Suspects") in prose
    for name in ("The Usual Suspects", "Usual Suspects"):
        text = f"You rated {name} 4/5, a thriller, and Return of the Jedi is an action film you should enjoy."
        result = check_explanation(movielens_case(), text, catalogue=ML_CATALOGUE)
        assert result.passed and result.unknown_names == [] and result.faithfulness == 1.0, (name, result.failed)
    # the template explainer quotes titles with their years; "(5/5)" after a title is its rating
    template = 'We recommend "Return of the Jedi (1983)". It is similar to movies you rated: "Star Wars" (5/5).'
    result = check_explanation(movielens_case(), template, catalogue=ML_CATALOGUE)
    assert result.unknown_titles == [] and result.wrong_years == [] and result.consistent_ratings
    assert result.grounded and result.faithfulness == 1.0 and result.mentions_title
    # a moved article before an alternative title: "Big Blue, The (Grand bleu, Le)" is "The Big Blue"
    assert {"the big blue", "big blue"} <= title_forms("Big Blue, The (Grand bleu, Le) (1988)")
    assert "the city of lost children" in title_forms("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
    # one-word catalogue titles are words too: "heat" and "Fargo" are never unknown titles
    heat = check_explanation(movielens_case(), "Feel the heat of Fargo: Return of the Jedi, like Star Wars, is "
                             "an action movie for you.", catalogue=ML_CATALOGUE)
    assert heat.unknown_titles == [] and heat.grounded


def test_titles_named_in_path_texts_are_evidence():
    text = "You rated The City of Lost Children 5/5, and Return of the Jedi is just as odd and as much fun."
    path = "You rated City of Lost Children, The (1995) 5/5; it shares an actor with Return of the Jedi"
    result = check_explanation(movielens_case([path]), text, catalogue=ML_CATALOGUE)
    assert result.passed and result.faithfulness == 1.0, result.failed
    # a catalogue title that a path names (not as a rating) is evidence too
    named = "You rated Star Wars 5/5; it shares a director with Big Blue, The (Grand bleu, Le) (1988)"
    big_blue = "Like The Big Blue and Star Wars, which you rated 5/5, Return of the Jedi is an adventure for you."
    assert check_explanation(movielens_case([named]), big_blue, catalogue=ML_CATALOGUE).unknown_titles == []
    # without such a path, the same titles are real movies that the case does not hold: invented
    for invented in (text, big_blue):
        result = check_explanation(movielens_case(), invented, catalogue=ML_CATALOGUE)
        assert len(result.unknown_titles) == 1 and not result.grounded and result.faithfulness < 1


def test_a_title_after_a_clause_break_is_not_the_claims_object():
    # "which you rated 5/5" is about the title before it, not about the recommended movie after the comma
    text = "Like Toy Story, which you rated 5/5, Babe is a warm comedy that the whole family can enjoy."
    result = check_explanation(toy_case(), text, catalogue=CATALOGUE)
    assert result.consistent_ratings and result.passed, result.false_rating_claims


# ------------------------------------------------------------------ technical terms


def test_technical_leftovers():
    result = check_explanation(toy_case(), TECHNICAL, catalogue=CATALOGUE)
    assert result.technical_terms == ["cosine", "KNN", "neighbour", "raw weight"]
    assert not result.no_technical_terms and result.grounded and result.mentions_title
    assert find_technical_terms("Node movie:12 links to m.0bln8 via film.film.actor") == [
        "node", "typed entity id", "freebase id", "relation name"]
    assert find_technical_terms("Rated 4.5 stars, a path-breaking drama on the edge") == []


# ------------------------------------------------------------------ form: empty, cut off, length, title, personal


def test_empty_cut_off_short_and_untitled():
    empty = check_explanation(toy_case(), "")
    assert not empty.complete and not empty.usable and empty.words == 0 and math.isnan(empty.faithfulness)
    cut = check_explanation(toy_case(), "You rated Toy Story 5/5, and people who liked it also liked Babe, which")
    assert not cut.complete and not cut.usable
    short = check_explanation(toy_case(), "Watch Babe.", catalogue=CATALOGUE)
    assert not short.length_ok and short.words == 2 and short.mentions_title and short.complete
    untitled = check_explanation(toy_case(), "You will love this warm story about a brave pig and its farm friends.")
    assert not untitled.mentions_title


def test_a_blurb_that_names_none_of_the_users_movies_is_not_personal():
    blurb = check_explanation(toy_case(), "Babe is a must-watch for anyone who loves a warm comedy, and "
                              "it is a great choice for the whole family.", catalogue=CATALOGUE)
    assert not blurb.personal and blurb.grounded and blurb.usable and not blurb.passed


# ------------------------------------------------------------------ answers and best-of-n


def test_parse_explanation_cleans_and_rejects_unusable_answers():
    assert parse_explanation('Explanation: "' + GOOD + '"', min_words=8, max_words=60) == GOOD
    with pytest.raises(ValueError, match="empty"):
        parse_explanation("  ", min_words=8, max_words=60)
    with pytest.raises(ValueError, match="mid-sentence"):
        parse_explanation("You rated Toy Story 5/5 and people who liked it also liked", min_words=3, max_words=60)
    with pytest.raises(ValueError, match="repeats itself"):
        parse_explanation("Babe is great fun. " * 3, min_words=3, max_words=60)
    assert clean_explanation(GOOD + " And it also") == GOOD  # an unfinished last sentence is cut
    with pytest.raises(ValueError, match="has 2 words; write at least 5"):
        parse_explanation("Watch Babe.", min_words=5, max_words=60)
    with pytest.raises(ValueError, match="has 30 words; write at most 20"):
        parse_explanation(GOOD, min_words=5, max_words=20)
    with pytest.raises(ValueError, match='repeats itself \\("babe is a fun movie"\\)'):
        parse_explanation("Babe is a fun movie. Babe is a fun movie. Babe is a fun movie.", min_words=5, max_words=60)


def test_clean_explanation():
    assert clean_explanation('Explanation: "You will love Babe."') == "You will love Babe."
    assert clean_explanation("```\nYou will love Babe.\n```") == "You will love Babe."
    assert clean_explanation("You will love Babe. It is warm and") == "You will love Babe."
    assert clean_explanation("You will love Babe and") == "You will love Babe and"  # nothing complete to keep
    assert clean_explanation("Babe   is\n\nfun!") == "Babe is fun!"


def test_pick_best_keeps_the_best_passing_sample_and_drops_cases_without_one():
    bad = "You rated Babe 5/5, so you will enjoy this warm comedy again with Toy Story fans."
    kept, checks = pick_best([toy_case(), toy_case("1-3")], [[bad, GOOD, None], [bad, None]], catalogue=CATALOGUE)
    assert kept == [1, None]
    assert checks[0][2] is None and checks[0][1].passed and not checks[0][0].passed
    kept, _ = pick_best([toy_case("1-3")], [[bad, None]], catalogue=CATALOGUE, require_passed=False)
    assert kept == [0]


def test_parse_explanation_counts_the_case_titles_as_one_word():
    # An 8-word span said twice is a loop, unless it is the title of a movie in the evidence.
    title = "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb"
    case = toy_case().model_copy(update={"item": toy_case().item.model_copy(update={"title": title})})
    text = (f"You rated Babe 5/5, and people who liked it also liked {title}. "
            f"{title} is a sharp comedy, so it should suit you.")
    with pytest.raises(ValueError, match="repeats itself"):
        parse_explanation(text, min_words=5, max_words=80)
    assert parse_explanation(text, min_words=5, max_words=80, case=case) == text
    assert check_explanation(case, text, min_words=5, max_words=80).no_repetition


def test_a_genre_claimed_for_the_wrong_movie_is_ungrounded():
    """The students' "Casablanca (1942) is a sci-fi movie": every genre named is in the evidence,
    but not the genre of the movie it is claimed for."""
    case = air_force_one().model_copy(update={"history": air_force_one().history + [
        RatedMovie(item_id=7, title="Casablanca", year=1942, genres=["Drama", "Romance", "War"], rating=5,
                   timestamp=3)]})
    catalogue = Catalogue(titles=["Air Force One", "The Saint", "Spawn", "Casablanca", "Star Wars"], genres=GENRES)
    wrong = check_explanation(case, "You rated Star Wars 5/5, and people who liked it also liked Air Force One. "
                                    "Casablanca (1942) is a sci-fi movie, so it should suit you.", catalogue=catalogue)
    assert not wrong.grounded and wrong.unknown_genres == []
    assert wrong.wrong_genres == ["Casablanca is not Sci-Fi (Drama, Romance, War)"] and wrong.unsupported == 1
    for text in ("You rated Star Wars 5/5, and people who liked it also liked Air Force One. Star Wars (1977) is a "
                 "sci-fi movie, and Air Force One is an action thriller, so it should suit you.",
                 # "it" after "Like <title>, ...," is the recommended movie, not the title before it
                 "You rated Star Wars 5/5, and people who liked it also liked Air Force One. Like Casablanca, which "
                 "you rated 5/5, it is an action movie, so it should suit you."):
        assert check_explanation(case, text, catalogue=catalogue).wrong_genres == [], text
    two = check_explanation(case, "You rated Casablanca 5/5. Air Force One (1997) is an action and war film you "
                                  "may like, like The Saint.", catalogue=catalogue)
    assert two.wrong_genres == ["Air Force One is not War (Action, Thriller)"]
    like = check_explanation(case, "You rated The Saint 4/5, and people who liked it also liked Air Force One. Like "
                                   "Star Wars, which you rated 5/5, it is a sci-fi movie, so it should suit you.",
                             catalogue=catalogue)
    assert like.wrong_genres == ["Air Force One is not Sci-Fi (Action, Thriller)"]
    # The teacher's "Conspiracy Theory, which is a sci-fi movie, ...": a relative clause claims it too
    which = check_explanation(case, "You rated The Saint 4/5, and people who liked it also liked Air Force One, "
                                    "which is a sci-fi movie.", catalogue=catalogue)
    assert which.wrong_genres == ["Air Force One is not Sci-Fi (Action, Thriller)"]
    assert check_explanation(case, "You rated The Saint 4/5, and people who liked it also liked Air Force One, "
                                   "which is an action movie.", catalogue=catalogue).wrong_genres == []
