"""opt-fast: a fast trainer for OPT (Online Pre-Training for Offline-to-Online RL, ICML 2025)."""
