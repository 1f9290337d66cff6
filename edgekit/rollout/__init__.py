"""Phased rollouts: plan (phases, cohorts), gates (decisions with evidence), the rollout
record, and the controller that runs them inside ``edgekit serve``."""
