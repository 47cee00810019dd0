"""The reproduction ledger (`kdray ledger`): every paper cell kdray's presets aim at
(`paper_cells.json`, read by `cells`), what our runs measured for it per tier, the status against
the paper's number and the compute spent or estimated (`flops`), rendered as results/LEDGER.md (`markdown`) and
results/ledger.csv (`render`). No Ray, no MLflow: `kdray.runtime.ledger` reads the runs."""
