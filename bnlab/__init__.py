"""bnlab: a lab bench for batch normalization and internal covariate shift."""
