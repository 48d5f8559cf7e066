"""RecLAIF (He et al. 2025): the language model as the recommender, judged and improved by DPO.

`task: recommend` (flows/reclaif.py) runs these stages after the evidence stages (data,
recommender, paths), one module each:

1. `build_candidate_sets` (candidates.py): per sampled user, the held-out next movie plus M
   negatives, shuffled, deterministic by seed.
2. `reclaif_teacher` or `reclaif_template_teacher` (teacher.py): the SFT data (`sft.jsonl`), the
   teacher LLM's valid answers or the classic recommender's ranking written in RecLAIF's format.
3. `train_sft`, then per round r (Algorithm 1): `reclaif_sample_pairs` (pairs.py) draws two
   answers per train set from the current student, `reclaif_judge_pairs` (judge.py) picks one
   with RecLAIF's judge, and `train_dpo` trains the round-r student (tasks/train.py).
4. `reclaif_recommend` (recommend.py): every LLM recommender (base, SFT, DPO rounds) answers the
   eval sets.
5. `reclaif_evaluate` (evaluate.py): the comparison table, LLM and classic recommenders on the
   very same candidate sets, with bootstrap CIs over eval users.

Their logic (candidate sampling, prompts, reading an answer, judging, the comparison's metrics
and tables) is the library, recxplain/reclaif/; a stage module imports from recxplain only,
never from another stage module.
"""
