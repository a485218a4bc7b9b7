"""Apache Airflow provider for Clarify (time series) and Clarity (air quality reports)."""

from __future__ import annotations

__version__ = "0.1.0"
