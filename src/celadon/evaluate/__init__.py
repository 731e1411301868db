"""The evaluate stage: per-task metrics (scikit-learn), minority/majority and confusion-pair analysis."""
