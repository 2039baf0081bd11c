"""The lab: a model under test, run on prompt sets, with every computation a claim reads.

Claims and claim discovery (``python -m circuit.discover``) measure the same things: clean and corrupted
runs of a prompt set, the spec's metric, patching sweeps, direct logit attribution, the logit lens and
attention summaries, and bootstrap intervals over prompts of the statistics built from them. A
:class:`Lab` computes each once per (model, prompt set) and keeps the results of the most recent prompt
sets, so that claims tested on the same prompts share their sweeps.

The metric comes from the spec's ``[prompts] metric``: ``"seed"`` is the source analysis' logit
difference against a perturbed answer (``circuit.metrics.seed_logit_diff``);
``"first_differing_token"`` feeds, after each prompt, the common prefix of the clean answer and the
corrupted prompt's answer, and reads the logit difference of their first differing tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["KEEP_PROMPT_SETS", "Lab"]

KEEP_PROMPT_SETS = 4
"""Results (activation caches, patching sweeps) are kept for this many recent prompt sets: enough for the
claims of one example to share them, few enough for a large model's caches to fit."""




class Lab:
    """The model under test, run on prompt sets, with results cached for the session.

    Every claim of a session draws its prompt sets from the same strategy, so equal prompt sets (e.g.
    hypothesis' first, simplest example) share their patching sweeps, caches and attributions.
    """

    def __init__(self, model: Any, spec: Any, cache: OrderedDict | None = None, *, level: float | None = None,
                 n_resamples: int | None = None, seed: int = 0, progress: Any = False, expand: bool = False) -> None:
        self.model, self.spec = model, spec
        self.progress = progress
        """Progress bars of patching sweeps (``activation_patch``'s ``progress``: False, True or tqdm options)."""
        self._cache = OrderedDict() if cache is None else cache
        self.level = spec.statistics.level if level is None else level
        """Level of the intervals this lab computes (the spec's, or a claim's per-set level: :meth:`judge`)."""
        self.n_resamples = spec.statistics.n_resamples if n_resamples is None else n_resamples
        self.expand = expand
        """Whether intervals read the expanded percentile bootstrap (``circuit.stats.expanded_tail``): a judging lab's."""
        self.seed = seed
        """Seed of the bootstrap resamples."""

    def at(self, *, level: float | None = None, n_resamples: int | None = None, seed: int | None = None,
           expand: bool | None = None) -> Lab:
        """This lab with other interval settings, sharing its results (sweeps, caches)."""
        return Lab(self.model, self.spec, self._cache, level=self.level if level is None else level,
                   n_resamples=self.n_resamples if n_resamples is None else n_resamples,
                   seed=self.seed if seed is None else seed, progress=self.progress,
                   expand=self.expand if expand is None else expand)

    def __repr__(self) -> str:  # shown in hypothesis' failing-example line
        return f"<lab: {getattr(self.model, 'label', '?')}, spec {self.spec.path.name}>"

    # prompts ----------------------------------------------------------------------------------------
    def prompt_sets(self):
        """The hypothesis strategy of the spec's prompt sets, for this model's tokenizer.

        Sets that repeat a clean prompt are not drawn: the bootstrap resamples prompts, and copies of one
        prompt would make an interval look narrower than the evidence is. With the
        'first_differing_token' metric, only sets whose clean and corrupted answers first differ at the
        same token are drawn (so that every row reads the same position).
        """
        from circuit.strategies import prompt_sets

        p = self.spec.prompts
        sets = prompt_sets(self.model.tokenizer, min_size=p.min_size, max_size=p.max_size,
                           min_digits=p.min_digits, max_digits=p.max_digits, corruptions=p.corruptions)
        return sets.filter(self.accepts)

    def accepts(self, ps: Any) -> bool:
        """Whether the claims measure on ``ps``: distinct clean prompts and, with the
        'first_differing_token' metric, answers that first differ at one depth for every prompt."""
        if len(set(ps.clean)) != len(ps.clean):
            return False
        return self.spec.prompts.metric != "first_differing_token" or len(
            {k for k, *_ in self._split_answers(ps)}) == 1

    def draw(self, data: Any):
        """Draw one prompt set with hypothesis' ``st.data()`` object (shown in a falsifying example)."""
        return data.draw(self.prompt_sets(), label="prompt set")

    def fresh_like(self, ps: Any, seed: int, *, max_tries: int = 1000):
        """A prompt set of the same shape as ``ps`` with fresh problems, or None when none is found.

        Same shape: as many prompts, each operand with the same number of digits, both operand orders where
        ``ps`` pairs them, the same corruption; accepted by :meth:`accepts` (so the claims measure on it).
        Seeded Python randomness, so a grown set (:meth:`grow`) is the same on every run.
        """
        import random

        from circuit.prompts import corrupt_reversed, corrupt_same_length
        from circuit.strategies import PromptSet
        from circuit.task import Problem, perturbations

        def digits(n: int) -> tuple[int, int]:
            return 10 ** (n - 1), 10**n

        for attempt in range(max_tries):
            rng = random.Random(f"fresh:{seed}:{attempt}")
            clean: list[Problem] = []
            for i, c in enumerate(ps.clean):
                previous = clean[i - 1] if i % 2 else None
                if previous is not None and c == ps.clean[i - 1].swapped():
                    clean.append(previous.swapped())
                else:
                    clean.append(Problem(rng.randrange(*digits(len(str(c.a)))), rng.randrange(*digits(len(str(c.b))))))
            options = [perturbations(q.product) for q in clean]
            if not all(options):
                continue
            incorrect = tuple(o[rng.choice(sorted(o))] for o in options)
            if ps.corruption == "reversed":
                corrupted = corrupt_reversed(clean)
                if any(c.product == x.product for c, x in zip(clean, corrupted)):
                    continue
            else:
                corrupted = corrupt_same_length(clean, seed=rng.randrange(2**16))
            fresh = PromptSet(tuple(clean), incorrect, tuple(corrupted), ps.corruption)
            if fresh != ps and self.accepts(fresh):
                return fresh
        return None

    def looks(self, ps: Any) -> int:
        """How many times a claim may look at a set grown from ``ps``: the spec's ``[prompts] budget`` over the
        set's size (the first look, then one per batch of as many fresh prompts)."""
        return max(1, self.spec.prompts.prompt_budget // len(ps.clean))

    def grow(self, first: Any, current: Any, look: int):
        """``current`` with a batch of fresh prompts of ``first``'s shape appended (a set the claims measure on,
        its clean prompts all distinct), or None when none is found. Seeded by ``look``: the same on every run."""
        from circuit.strategies import PromptSet

        for attempt in range(20):
            fresh = self.fresh_like(first, seed=1000 * look + attempt)
            if fresh is None:
                return None
            grown = PromptSet(current.clean + fresh.clean, current.incorrect + fresh.incorrect,
                              current.corrupted + fresh.corrupted, current.corruption)
            if self.accepts(grown):
                return grown
        return None

    def judge(self, rule: Any, ps: Any, measure: Callable[[Lab, Any], Any], *, n_sets: int):
        """A claim's :class:`circuit.decision.Judgement` on ``ps`` (``circuit.decision.judge``): ``measure(lab,
        prompts)`` is an interval, computed by a lab at the look's level (expanded percentile bootstrap); an
        inconclusive set grows by fresh prompts of its shape (:meth:`grow`) up to the spec's budget."""
        from circuit.decision import Scheme, judge

        stats = self.spec.statistics
        scheme = Scheme(stats.family_level, looks=self.looks(ps), power=stats.power, n_sets=n_sets)
        lab = self.at(level=scheme.level(rule), expand=True)
        return judge(rule, scheme, lambda prompts: measure(lab, prompts), ps,
                     lambda prompts, look: self.grow(ps, prompts, look))

    def task_gate(self, ps: Any):
        """Whether the model does the task on ``ps``: clean exceeds corrupted (mean of clean - corrupted logit
        difference > 0), one-sided at the spec's ``family_level``, on the set as drawn. Every claim that reads
        the model's computation judges only when this is supported."""
        from circuit.decision import Rule, Scheme, judge

        rule, scheme = Rule(">", 0), Scheme(self.spec.statistics.family_level, power=self.spec.statistics.power)
        lab = self.at(level=scheme.level(rule), expand=True)
        return judge(rule, scheme, lambda prompts: lab.task_separation(prompts), ps)

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (model, prompt set, what); only the most recent prompt sets are kept."""
        group, what = (self.model.name, key[0]), key[1:]
        results = self._cache.setdefault(group, {})
        self._cache.move_to_end(group)
        while len(self._cache) > KEEP_PROMPT_SETS:
            self._cache.popitem(last=False)
        if what not in results:
            results[what] = compute()
        return results[what]

    def _split_answers(self, ps: Any) -> list[tuple[int, list[int], int, int]]:
        """Per prompt: (k, common prefix, clean token, corrupted token) of clean vs corrupted-prompt answers."""
        from circuit.metrics import first_difference

        splits = [first_difference(self.model.tokenizer, c.product, x.product) for c, x in zip(ps.clean, ps.corrupted)]
        return [(-1, [], 0, 0) if s is None else (len(s[0]), *s) for s in splits]

    def inputs(self, ps: Any):
        """``(clean batch, corrupted batch, metric)``: the token batches and the spec's metric.

        'seed': the prompts, and the source's logit difference against ``ps.incorrect`` read at the final
        position. 'first_differing_token': each prompt followed by the common prefix of the clean answer and
        the corrupted prompt's answer (the same prefix after the clean and the corrupted prompt), and the
        logit difference of their first differing tokens at the final position.
        """
        import torch

        from circuit.metrics import LogitDiffMetric, seed_logit_diff
        from circuit.prompts import PromptBatch, tokenize_prompts

        def compute():
            tok = self.model.tokenizer
            clean = tokenize_prompts(tok, [p.prompt for p in ps.clean])
            corrupted = tokenize_prompts(tok, [p.prompt for p in ps.corrupted])
            if self.spec.prompts.metric == "seed":
                return clean, corrupted, seed_logit_diff(tok, clean, ps.clean, ps.incorrect)
            split = self._split_answers(ps)
            prefix = torch.tensor([s[1] for s in split], dtype=torch.long).reshape(len(split), -1)

            def extend(batch: PromptBatch) -> PromptBatch:
                tokens = torch.cat([batch.tokens, prefix], dim=1)
                mask = torch.cat([batch.attention_mask, torch.ones_like(prefix)], dim=1)
                return PromptBatch(batch.prompts, tokens, mask, batch.final_position + prefix.shape[1], batch.bos)

            clean, corrupted = extend(clean), extend(corrupted)
            metric = LogitDiffMetric(clean.final_position[:, None].clone(), torch.tensor([[s[2]] for s in split]),
                                     torch.tensor([[s[3]] for s in split]), torch.ones(len(split), 1))
            return clean, corrupted, metric

        return self._cached((ps, "inputs"), compute)

    def run(self, ps: Any, which: str = "clean"):
        """``(logits, cache)`` of the clean or corrupted run."""
        import torch

        def compute():
            clean, corrupted, _ = self.inputs(ps)
            tokens = (clean if which == "clean" else corrupted).tokens.to(self.model.device)
            with torch.no_grad():
                return self.model.bridge.run_with_cache(tokens)

        return self._cached((ps, "run", which), compute)

    def logit_diffs(self, ps: Any):
        """Per-prompt metric on clean and on corrupted prompts: ``(clean [batch], corrupted [batch])``.

        Read in float32 from the logits, whatever the model's dtype (the logits themselves keep its rounding).
        """
        def compute():
            metric = self.inputs(ps)[2]
            return (metric(self.run(ps, "clean")[0].float()).detach().cpu(),
                    metric(self.run(ps, "corrupted")[0].float()).detach().cpu())

        return self._per_prompt(ps, *self._cached((ps, "logit_diffs"), compute))

    def _per_prompt(self, ps: Any, *values: Any) -> tuple:
        """``values``, each checked to hold one value per prompt of ``ps`` (``MetricShapeError`` otherwise)."""
        from circuit.metrics import check_per_prompt

        for value in values:
            check_per_prompt(value, len(ps.clean), "The spec's metric")
        return values

    # statistics -------------------------------------------------------------------------------------
    def ci(self, values: Any, statistic: Callable | None = None):
        """Bootstrap interval over prompts (last dim) with the spec's level, resamples and minimum of prompts.

        Every claim's statistic goes through here, so a claim fails with the reason when its prompts are fewer
        than ``[statistics] min_prompts`` (the prompts of a drawn set are distinct: see :meth:`accepts`) or
        when a value or the statistic is NaN or infinite (``circuit.stats``).
        """
        from circuit.stats import bootstrap_ci

        return bootstrap_ci(values, level=self.level, n_resamples=self.n_resamples, seed=self.seed,
                            statistic=statistic, min_prompts=self.spec.statistics.min_prompts, expand=self.expand)

    def task_separation(self, ps: Any):
        """Interval of mean(clean - corrupted) logit difference: the task-solved precondition's statistic."""
        clean, corrupted = self.logit_diffs(ps)
        return self.ci(clean - corrupted)

    def ratio_ci(self, result: Any, reduce: Callable[[Any], Any]):
        """Interval of ``reduce(normalized recovery)`` of a patching result, per bootstrap resample.

        Recovery is ``(patched - corrupted) / (clean - corrupted)`` of the means over prompts, taken in
        each resample before the ratio (the source normalizes mean logit differences). ``reduce`` maps
        ``[..., *cells]`` to ``[...]``.
        """
        import torch

        cells = result.per_prompt.shape[:-1]
        stacked = torch.cat([result.per_prompt.detach().cpu().double().flatten(0, -2),
                             result.clean.detach().cpu().double()[None],
                             result.corrupted.detach().cpu().double()[None]])

        def statistic(x):
            means = x.mean(-1)
            rec = (means[..., :-2] - means[..., -1:]) / (means[..., -2:-1] - means[..., -1:])
            return reduce(rec.reshape(*rec.shape[:-1], *cells))

        return self.ci(stacked, statistic)

    def effects(self, result: Any):
        """Raw per-prompt patching effects ``patched - corrupted``, ``[*cells, batch]`` (no normalization).

        Subtracted in float64, whatever dtype the sweep's metric values come in."""
        return result.per_prompt.detach().cpu().double() - result.corrupted.detach().cpu().double()

    # heavy computations -----------------------------------------------------------------------------
    def patch(self, ps: Any, site: str, method: str = "activation"):
        """Patching of ``site`` (clean into corrupted), cached: a ``circuit.patching.PatchResult``.

        ``method`` is ``"activation"`` (exact) or ``"attribution"`` (its gradient approximation).
        """
        from circuit.patching import activation_patch, attribution_patch

        if method not in ("activation", "attribution"):
            raise ValueError(f"method={method!r}: use 'activation' (exact) or 'attribution' (its approximation).")

        def compute():
            clean, corrupted, metric = self.inputs(ps)
            tokens = clean.tokens.to(self.model.device), corrupted.tokens.to(self.model.device)
            if method == "attribution":
                return attribution_patch(self.model.bridge, *tokens, metric, site)
            return activation_patch(self.model.bridge, *tokens, metric, site, progress=self.progress)

        return self._cached((ps, "patch", site, method), compute)

    def directions(self, ps: Any):
        from circuit.attribution import residual_directions

        return self._cached((ps, "directions"), lambda: residual_directions(self.model, self.inputs(ps)[2]))

    def head_attribution(self, ps: Any):
        """Direct logit attribution per head on the clean run ``[layer, head, batch]`` (+ completing terms)."""
        from circuit.attribution import head_attribution

        return self._cached((ps, "head_attribution"),
                            lambda: head_attribution(self.model, self.run(ps)[1], self.directions(ps)))

    def layer_attribution(self, ps: Any):
        """Direct logit attribution per component (embed, attention and MLP layers) on the clean run."""
        from circuit.attribution import layer_attribution

        return self._cached((ps, "layer_attribution"),
                            lambda: layer_attribution(self.model, self.run(ps)[1], self.directions(ps)))

    def direct_effects(self, ps: Any):
        """The direct effect of patching each component's clean output into the corrupted run at the positions
        the metric reads (``circuit.attribution.direct_patch_effects``): ``[component, batch]``, with labels."""
        from circuit.attribution import direct_patch_effects

        return self._cached((ps, "direct_effects"), lambda: direct_patch_effects(
            self.model, self.run(ps)[1], self.run(ps, "corrupted")[1], self.directions(ps)))

    def attribution_target(self, ps: Any):
        """Per prompt, what the attributions add up to exactly: the metric on the clean logits, read before
        any transform the model applies after the unembedding (Gemma-2's soft-cap; see
        ``circuit.attribution.attribution_target``)."""
        from circuit.attribution import attribution_target

        return self._cached((ps, "attribution_target"), lambda: attribution_target(
            self.model, self.run(ps)[1], self.directions(ps)).detach().cpu())

    def logit_lens(self, ps: Any):
        from circuit.attribution import logit_lens

        return self._cached((ps, "logit_lens"),
                            lambda: logit_lens(self.model, self.run(ps)[1], self.directions(ps)))

    def attention(self, ps: Any, query: str = "all"):
        """Attention summaries of every head on the clean prompts (``circuit.attention``)."""
        from circuit.attention import summarize_attention

        return self._cached((ps, "attention", query), lambda: summarize_attention(
            self.model, self.inputs(ps)[0], cache=self.run(ps)[1], query=query))

    def tokens_of_first_prompt(self, ps: Any) -> list[str]:
        """Axis labels: the first clean prompt's tokens, with their positions."""
        tok = self.model.tokenizer
        ids = self.inputs(ps)[0].tokens[0].tolist()
        return [f"{i}:{tok.decode([t])!r}"[:14] for i, t in enumerate(ids)]
