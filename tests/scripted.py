"""Test helpers for the teacher and judge tests: a hand-made case and a scripted chat model.

`ScriptedModel` has the `generate` method of recxplain.llm's models and answers from a Python
function, so the tests exercise OUR parsing, retry and verdict logic on known answers. The real
providers are tested in their own files, and test_teacher.py also runs the stages end to end
through `load_chat_model` with the real local model.
"""

from __future__ import annotations

from collections.abc import Callable

from recxplain.llm import Generation
from recxplain.schemas import Case, Movie, Neighbour, PathEvidence, RatedMovie


class ScriptedModel:
    """`reply(messages, sample_index) -> str` answers every prompt; `prompts` records each call.
    A reply that is a Generation is returned as is (e.g. one with `error` set)."""

    def __init__(self, reply: Callable[[list[dict], int], str]):
        self.reply = reply
        self.prompts: list[list[dict]] = []
        self.usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}

    def generate(self, prompts, sampling, n=1):
        outputs = []
        for messages in prompts:
            self.prompts.append(messages)
            samples = []
            for j in range(n):
                text = self.reply(messages, j)
                if isinstance(text, Generation):
                    samples.append(text)
                    continue
                samples.append(Generation(text, prompt_tokens=10, completion_tokens=len(text.split())))
                self.usage["calls"] += 1
                self.usage["prompt_tokens"] += 10
                self.usage["completion_tokens"] += len(text.split())
            outputs.append(samples)
        return outputs


def toy_case(case_id: str = "1-2") -> Case:
    """User 1 (24, M, technician) recommended Babe, with history, neighbours and one path."""
    return Case(
        case_id=case_id,
        split="train",
        user_id=1,
        profile={"age": 24, "gender": "M", "occupation": "technician"},
        history=[
            RatedMovie(item_id=3, title="Toy Story", year=1995, genres=["Animation", "Comedy"], rating=5, timestamp=1),
            RatedMovie(item_id=4, title="Heat", year=1995, genres=["Action"], rating=3, timestamp=2),
        ],
        item=Movie(item_id=2, title="Babe", year=1995, genres=["Comedy", "Drama"]),
        rank=1,
        score=0.5,
        neighbours=[
            Neighbour(item_id=5, title="The Lion King", weight=0.4321, rated=5.0),
            Neighbour(item_id=9, title="Fargo", weight=0.2),
        ],
        paths=[
            PathEvidence(pattern="user-movie-genre-movie",
                         steps=["user:1", "rated", "movie:3", "genre", "genre:Comedy", "genre", "movie:2"],
                         text="You rated Toy Story 5/5; it shares the genre Comedy with Babe.", score=0.9)
        ],
        next_item=Movie(item_id=7, title="Star Wars", year=1977, genres=["Sci-Fi", "War"]),
    )


TITLES = ["Toy Story", "Heat", "Babe", "The Lion King", "Fargo", "Star Wars", "Return of the Jedi", "Big"]
GENRES = ["Action", "Animation", "Children's", "Comedy", "Drama", "Sci-Fi", "War", "Western"]

GOOD = ("Since you loved Toy Story and The Lion King, Babe should charm you too: it is a warm comedy "
        "about a brave little pig that the whole family can enjoy.")
TECHNICAL = ("Babe has a cosine similarity of 0.43 with The Lion King, a KNN neighbour you rated 5/5, so "
             "you will like this comedy a lot.")
