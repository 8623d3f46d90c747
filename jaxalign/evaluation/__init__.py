"""Evaluation of a trained run: metrics report, predictions, plots and run comparison."""
