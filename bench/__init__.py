"""EMMA benchmarks: each script prints its figures and the machine they ran on."""
