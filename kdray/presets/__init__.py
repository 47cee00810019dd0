"""Study presets: plain dotted-key overrides of `ExperimentConfig`, the ablation rows, the papers'
numbers, the searched keys (`SPACE`, selected from the method's `Config.SEARCH`, where the ranges
are written) and the search budget per preset (`BUDGET`), kept out of `studies/` so each study
script stays short. No Ray, no training logic."""
