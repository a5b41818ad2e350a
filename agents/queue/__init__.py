"""The merge queue: finished branches wait their turn, a person approves what is risky."""

from agents.queue.merge_queue import MergeQueue
from agents.queue.risk import assess_risk

__all__ = ["MergeQueue", "assess_risk"]
