"""The built-in table views, one module per view: the view registry (``harness.report.tables.VIEWS``)
imports every module in this folder, so a new view is one new file here."""
