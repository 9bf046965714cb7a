"""The judge: prompts and verdict parsing, the frozen judge's rollouts, teacher-forced scoring and attention capture
(pretraining and evaluation of the synthetic judge live in judge/pretrain.py and judge/evaluate.py)."""

from saga.judge.frozen import FrozenJudge, judge_vocabulary, reads_vocabularies
from saga.judge.rollout import Rollout
from saga.judge.scoring import Scores

__all__ = ["FrozenJudge", "Rollout", "Scores", "judge_vocabulary", "reads_vocabularies"]
