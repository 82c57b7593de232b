"""Analysis of runs: percentile spectra and exports, comparisons, capacity planning, charts
and reports."""
