"""The HTML report: Altair charts of the analysis tables (``vega`` building blocks; ``plots``,
``reference_plots``, ``images``), the generated findings (``sentences``), the page from Jinja2
templates (``page``, ``templates/``) and the build of figures and CSV tables (``build``)."""
