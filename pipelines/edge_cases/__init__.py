"""Edge-case selection: which scored rows are worth an annotator's time.

Strategies, each usable alone or combined (configured under ``edge_cases`` in the config):

* low confidence: top-1 probability below ``min_confidence``;
* small margin: top-1 minus top-2 probability below ``min_margin``;
* disagreement: the challenger predicts another class than the champion;
* failure-trigger rules from a version-controlled YAML file (``rules_file``), e.g. "predicted 7
  with scanner C";
* a per-batch ``budget``, with diversity: no predicted class takes more than
  ``max_class_share`` of it, and no cluster more than ``max_cluster_share`` (the candidates are
  clustered by a seeded k-means on their standardised numeric features, ``n_clusters`` centres
  fitted on a sample of them); the budget is filled in priority order, skipping rows whose class
  or cluster is full, so the others fill it; when too few classes or clusters have candidates,
  fewer rows than the budget are selected (a cap is never lifted to fill the budget);
* dedupe: rows already queued or labeled are never selected again;
* the evaluation sample (``evaluation``): beside the edge cases, a Poisson sample of the other
  rows with known inclusion probabilities, for an unbiased champion-vs-challenger comparison.

Vectorised over NumPy arrays: one boolean mask per strategy, no copy of the batch per strategy.
Only the head of the priority order that the budget needs is sorted, looked up in the exclusion
set and clustered, so a 1M-row batch costs a few passes over a few of its columns.

Modules: ``rules`` (parse the rules file's text, one mask per rule), ``selection`` (``select``:
masks, priority order, the walk under the caps), ``clusters`` (the cluster cap's k-means),
``arrow`` (Arrow text compared in place, ids read at a few rows), ``evaluation``
(``evaluation_sample``: the sample's inclusion probabilities and its draw). The rules file itself
is read by ``edgeloop.data.readers.load_rules``.
"""

from pipelines.edge_cases.arrow import _Column as _Column
from pipelines.edge_cases.arrow import _excluded_at as _excluded_at
from pipelines.edge_cases.clusters import SAMPLE_PER_CLUSTER
from pipelines.edge_cases.clusters import _fit_clusters as _fit_clusters
from pipelines.edge_cases.evaluation import (
    comparison_weights,
    disagreements_first_probabilities,
    evaluation_sample,
    excluded_mask,
    inclusion_probabilities,
)
from pipelines.edge_cases.rules import OPS, SCORE_COLUMNS, Condition, Rule, parse_rules, rule_masks
from pipelines.edge_cases.selection import _candidates as _candidates
from pipelines.edge_cases.selection import _fill as _fill
from pipelines.edge_cases.selection import select

# The private names above are the phases benchmarks/bench_selection.py replays one by one.
__all__ = [
    "OPS",
    "SAMPLE_PER_CLUSTER",
    "SCORE_COLUMNS",
    "Condition",
    "Rule",
    "comparison_weights",
    "disagreements_first_probabilities",
    "evaluation_sample",
    "excluded_mask",
    "inclusion_probabilities",
    "parse_rules",
    "rule_masks",
    "select",
]
