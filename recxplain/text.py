"""Text helpers shared by the model providers and the stages.

- `cut_at_repeated_sentence`: the answer up to its first repeated sentence, the rule behind
  `SamplingConfig.stop_on_repeat`. The local provider stops decoding with it and `ChatModel`
  cuts every answer (API answers arrive whole), so all providers give the same texts.
"""

from __future__ import annotations

import re

# A sentence ends at whitespace after '.', '!' or '?' (the split recxplain.checks.repetition uses too).
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
MIN_SENTENCE_WORDS = 3  # shorter repeats ("Yes. Yes.", "Fargo. Fargo.") are not loops


def sentence_key(sentence: str) -> str:
    """What two sentences share when they repeat: lowercased [a-z0-9] runs joined by single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


def cut_at_repeated_sentence(text: str, *, finished: bool = True) -> str:
    """`text` up to (without) its first sentence that repeats an earlier one, right-stripped;
    `text` itself when no sentence of at least MIN_SENTENCE_WORDS words repeats.

    Sentences are compared by `sentence_key`. `finished=False` is for an answer still being
    written: its last piece may yet grow ("rated 3." -> "rated 3.5 stars."), so only sentences
    followed by whitespace count; a cut found then is the one the whole answer gets.
    """
    seen: set[str] = set()
    start = 0
    breaks = [(m.start(), m.end()) for m in SENTENCE_BREAK.finditer(text)]
    if finished:
        breaks.append((len(text), len(text)))
    for end, next_start in breaks:
        key = sentence_key(text[start:end])
        if len(key.split()) >= MIN_SENTENCE_WORDS:
            if key in seen:
                return text[:start].rstrip()
            seen.add(key)
        start = next_start
    return text
