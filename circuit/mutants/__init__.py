"""Mutation testing of the claims: do they fail where they must, and only there?

A claims suite is worth what it catches. Mutation testing builds variants of the model and of its spec whose
truth is known by construction and runs the claims on each: a relabeling that keeps the function but moves
a named head to another slot, a spec that names the least important alternative or flips a sign, the named
components zeroed, random weights. Each mutant says which claim tests must fail on it; a test that passes
there *missed* it, and a test that fails on a function-preserving mutant it should pass is a *false kill*.

One concept per module: ``weights`` (model mutants), ``importance`` (the least important alternative),
``specs`` (what a spec names; spec mutants), ``reads`` (which claim tests read which spec fields),
``build`` (every mutant with its truth), ``run`` (the claims on mutants, in pytest subprocesses),
``scoring`` (the scores and their table), ``cli`` (``python -m circuit.mutants``).
"""

from circuit.mutants.build import IDENTITIES as IDENTITIES
from circuit.mutants.build import KINDS as KINDS
from circuit.mutants.build import build_mutants as build_mutants
from circuit.mutants.cli import mutation_test as mutation_test
from circuit.mutants.reads import claim_tests as claim_tests
from circuit.mutants.scoring import Mutant as Mutant
from circuit.mutants.scoring import Score as Score
from circuit.mutants.scoring import is_killed as is_killed
from circuit.mutants.scoring import render_table as render_table
from circuit.mutants.scoring import score as score
from circuit.mutants.specs import named_components as named_components
from circuit.mutants.specs import spec_mutants as spec_mutants
from circuit.mutants.weights import ablate as ablate
from circuit.mutants.weights import permute_heads as permute_heads
from circuit.mutants.weights import random_weights as random_weights
