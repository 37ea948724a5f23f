# Drift experiment (issue: monitoring). Appends its targets to EXTRA_TARGETS.
