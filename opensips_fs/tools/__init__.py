"""Small command-line helpers: an EVI event printer, the demo runner."""
