"""Claim (precondition): the model separates clean from corrupted prompts at all.

Every normalized patching effect divides by ``clean - corrupted`` logit difference, and every claim about how
the model computes the answer presumes that it computes it. So every claim but the identities is judged only
on prompt sets where clean exceeds corrupted, one-sided at the spec's level (``Lab.task_gate``); this claim
states it on its own. The source analysis' own numbers (clean 0.229,
corrupted 0.27 on 8 prompts) would not pass: the report makes that visible.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.report import line_figure

STATEMENT = ("The task is solved at all: the logit difference on clean prompts exceeds that on corrupted prompts "
             "(the CI of the mean difference lies above 0).")


def _lens(lab, prompt_set):
    lens = lab.logit_lens(prompt_set)
    return {"Logit lens: logit difference of the accumulated residual stream (clean prompts, mean)":
            (lambda: line_figure(lens.mean, title="Logit lens (final position)", xlabel="residual stream",
                                 ylabel="logit difference", xticklabels=list(lens.labels)),
             "If the claim holds, the last point (the model's logit difference, correct - incorrect "
             "answer) lies clearly above 0; where the line rises shows which blocks compute the answer.")}


@pytest.mark.claim(id="task-solved", statement=STATEMENT)
@given(data=st.data())
def test_clean_exceeds_corrupted_logit_difference(claim, verdict, data):
    verdict.judge(data, "mean over prompts of (clean - corrupted) logit difference",
                  lambda lab, ps: lab.task_separation(ps), Rule(">", 0), figures=_lens, task=False)
