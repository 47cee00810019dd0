"""Study presets: plain dotted-key overrides of `ExperimentConfig` and the papers' numbers, kept
out of `studies/` so each study script stays short. No Ray, no training logic."""
