"""Reports from the daily rollups, the rollups themselves, and CSV exports."""
