"""The math of one weight matrix: budgets, the alternating solver, the compressed linear."""
