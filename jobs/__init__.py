"""plana-jobs: the job runners behind PLANA's Crossplane Compositions."""

__version__ = "0.1.0"
