"""Dataset health straight from a feature cache: near-duplicates and leakage, outliers, label issues, balance."""
