"""LAUGEN as a test harness for longitudinal models (pytest plugin ``laugen``)."""
