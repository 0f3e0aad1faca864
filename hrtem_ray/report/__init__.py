"""The HTML report: Altair charts of the analysis tables (``plots``) and the page, figures and CSV tables (``build``)."""
