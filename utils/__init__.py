"""Data, losses, metrics, training engine and plots for the IRSTD toolbox."""
