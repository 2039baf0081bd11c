"""Claim (precondition): the model separates clean from corrupted prompts at all.

Every normalized patching effect divides by ``clean - corrupted`` logit difference. If that difference
is not significantly different from 0, the normalized effects are ratios of noise; claims that normalize
then fail with this reason (``lab.require_task_solved``). The source analysis' own numbers (clean 0.229,
corrupted 0.27 on 8 prompts) would not pass: the report makes that visible.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.report import line_figure

STATEMENT = ("The task is solved at all: the logit difference on clean prompts differs from that on corrupted "
             "prompts (the CI of the mean difference excludes 0).")


@pytest.mark.claim(id="task-solved", statement=STATEMENT)
@given(data=st.data())
def test_clean_and_corrupted_logit_differences_differ(model, lab, claim, evidence, data):
    prompt_set = lab.draw(data)
    judged = lab.judge(Rule("excludes", 0), prompt_set, lambda lab, ps: lab.task_separation(ps),
                       n_sets=settings().max_examples)
    lens = lab.logit_lens(prompt_set)
    record = evidence.record(
        "mean over prompts of (clean - corrupted) logit difference", judged.interval, judgement=judged,
        prompt_set=prompt_set,
        figures={"Logit lens: logit difference of the accumulated residual stream (clean prompts, mean)":
                 (lambda: line_figure(lens.mean, title="Logit lens (final position)", xlabel="residual stream",
                                     ylabel="logit difference", xticklabels=list(lens.labels)),
                  "If the claim holds, the last point (the model's logit difference, correct - incorrect "
                  "answer) lies clearly above 0; where the line rises shows which blocks compute the answer.")},
    )
    assert record.holds, judged.explain(record.describe())
