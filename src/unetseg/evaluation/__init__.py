"""Evaluation: metrics of a checkpoint on a labelled dataset (a typed result), and its HTML report."""

from __future__ import annotations

from unetseg.evaluation.evaluate import evaluate
from unetseg.evaluation.report import write_report
from unetseg.evaluation.result import EvaluationResult, ImageResult

__all__ = ["evaluate", "write_report", "EvaluationResult", "ImageResult"]
