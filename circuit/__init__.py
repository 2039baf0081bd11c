"""circuit: the library behind circuit-claims (it knows nothing of pytest).

One concept per module: ``models`` (loading a model as a TransformerLens bridge plus an HF reference),
``task`` (multiplication problems and perturbed answers), ``prompts`` (token batches that line up),
``metrics`` (logit and log-prob differences), ``strategies`` (hypothesis strategies), ``equivalence``
(bridge vs HF), ``patching`` (activation and attribution patching), ``attribution`` (direct logit
attribution, logit lens), ``attention`` (attention summaries), ``bands`` (early, middle and late layers), ``stats`` (bootstrap intervals), ``spec``
(claim specs), ``lab`` (the statistics claims are judged on), ``discover`` (drafting a spec),
``evidence`` (evidence files and baselines), ``report`` (figures and the forest plot), ``palette`` (the report's
colours and their contrast), ``numbers`` (digits enough to tell numbers apart), ``evaluation`` (exact-match accuracy),
``mutants`` (mutation testing of the claims: ``python -m circuit.mutants``).
"""

from circuit.attention import AttentionSummary as AttentionSummary
from circuit.attention import HeadPatterns as HeadPatterns
from circuit.attention import head_patterns as head_patterns
from circuit.attention import summarize_attention as summarize_attention
from circuit.attribution import HeadAttribution as HeadAttribution
from circuit.attribution import LayerAttribution as LayerAttribution
from circuit.attribution import LogitLens as LogitLens
from circuit.attribution import ResidualDirections as ResidualDirections
from circuit.attribution import attribution_target as attribution_target
from circuit.attribution import direct_patch_effects as direct_patch_effects
from circuit.attribution import head_attribution as head_attribution
from circuit.attribution import layer_attribution as layer_attribution
from circuit.attribution import logit_lens as logit_lens
from circuit.attribution import residual_directions as residual_directions
from circuit.bands import EmptyBandError as EmptyBandError
from circuit.bands import draft_early_band as draft_early_band
from circuit.equivalence import Equivalence as Equivalence
from circuit.equivalence import compare_models as compare_models
from circuit.evaluation import ExactMatchResult as ExactMatchResult
from circuit.evaluation import exact_match_accuracy as exact_match_accuracy
from circuit.evidence import ClaimEvidence as ClaimEvidence
from circuit.evidence import Comparison as Comparison
from circuit.evidence import compare_with_baseline as compare_with_baseline
from circuit.evidence import load_evidence as load_evidence
from circuit.evidence import write_evidence as write_evidence
from circuit.lab import Lab as Lab
from circuit.metrics import AnswerMetric as AnswerMetric
from circuit.metrics import LogitDiffMetric as LogitDiffMetric
from circuit.metrics import LogProbDiffMetric as LogProbDiffMetric
from circuit.metrics import first_token_logit_diff as first_token_logit_diff
from circuit.metrics import seed_logit_diff as seed_logit_diff
from circuit.mutants import mutation_test as mutation_test
from circuit.metrics import teacher_forced_logprob_diff as teacher_forced_logprob_diff
from circuit.models import DeviceError as DeviceError
from circuit.models import DtypeError as DtypeError
from circuit.models import LoadedModel as LoadedModel
from circuit.models import ModelFolderError as ModelFolderError
from circuit.models import ModelLoadError as ModelLoadError
from circuit.models import ModelNotAvailableError as ModelNotAvailableError
from circuit.models import TokenizerError as TokenizerError
from circuit.models import UnsafeWeightsError as UnsafeWeightsError
from circuit.models import check_tokenizer as check_tokenizer
from circuit.models import load_model as load_model
from circuit.numbers import interval_text as interval_text
from circuit.palette import contrast_ratio as contrast_ratio
from circuit.patching import NotSignificantError as NotSignificantError
from circuit.patching import SITES as SITES
from circuit.patching import PatchResult as PatchResult
from circuit.patching import Site as Site
from circuit.patching import activation_patch as activation_patch
from circuit.patching import attribution_patch as attribution_patch
from circuit.patching import read_set as read_set
from circuit.patching import reference_activation_patch as reference_activation_patch
from circuit.prompts import PromptBatch as PromptBatch
from circuit.prompts import UnequalLengthError as UnequalLengthError
from circuit.prompts import corrupt_reversed as corrupt_reversed
from circuit.prompts import corrupt_same_length as corrupt_same_length
from circuit.prompts import tokenize_prompts as tokenize_prompts
from circuit.spec import Spec as Spec
from circuit.spec import SpecError as SpecError
from circuit.spec import find_spec as find_spec
from circuit.spec import load_spec as load_spec
from circuit.stats import Interval as Interval
from circuit.stats import bootstrap_ci as bootstrap_ci
from circuit.task import PERTURBATIONS as PERTURBATIONS
from circuit.task import Problem as Problem
from circuit.task import make_problems as make_problems
from circuit.task import perturb as perturb
from circuit.task import perturbations as perturbations
