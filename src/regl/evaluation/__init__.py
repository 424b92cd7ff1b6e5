"""Scoring: test accuracy, the reference classifier, personalization and the plots."""
