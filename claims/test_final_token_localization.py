"""Claim: the computation that decides the answer sits at the final position.

Patching the clean residual stream (``resid_pre``) into the corrupted run at one layer and position, and
measuring the normalized recovery ``(patched - corrupted) / (clean - corrupted)``: at the final position
the late layers recover (nearly) all of it, and in late layers no other position recovers much.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit import measures
from circuit.decision import Rule
from circuit.report import heatmap

STATEMENT = ("Final-token localization: patching the residual stream at the final position in late layers "
             "recovers the clean logit difference, and no other position does.")


def _figure(lab, prompt_set):
    result = lab.patch(prompt_set, "resid_pre")
    return {"Residual stream patching (resid_pre): normalized recovery, layer x position":
            (lambda: heatmap(result.normalized(), title="resid_pre patching: recovery", xlabel="position (first prompt's token)",
                            ylabel="layer", xticklabels=lab.tokens_of_first_prompt(prompt_set),
                            colorbar_label="(patched - corrupted) / (clean - corrupted)"),
                    "If the claim holds, in the late layers only the final position's column is near 1 (blue): "
                    "patching the residual stream there alone restores the answer; other positions stay near 0.")}


@pytest.mark.claim(id="final-token-localization", statement=STATEMENT)
@given(data=st.data())
def test_final_position_recovers_in_late_layers(claim, verdict, data):
    late = claim.late_from_layer
    verdict.judge(data, f"mean normalized recovery at the final position, layers {late}+",
                  lambda lab, ps: measures.final_recovery(lab, ps, late),
                  Rule(">=", claim.min_recovery, "min_recovery"), figures=_figure)


@pytest.mark.claim(id="final-token-localization", statement=STATEMENT)
@given(data=st.data())
def test_no_other_position_recovers_in_late_layers(claim, verdict, data):
    late = claim.late_from_layer
    verdict.judge(data, f"largest normalized recovery at any non-final position, layers {late}+",
                  lambda lab, ps: measures.other_recovery(lab, ps, late),
                  Rule("<=", claim.max_other_recovery, "max_other_recovery"), figures=_figure)
