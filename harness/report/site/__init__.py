"""The published leaderboard: a static site built from run records (``ddbench publish``).

:mod:`.rows` turns records into leaderboard rows (the views' grouping rules, ranks with ties, the
margin over the best baseline: :mod:`harness.report.margins`, provenance, published numbers,
re-evaluations), :mod:`.exports` renders them as Markdown and LaTeX, :mod:`.plots` draws the
figures (matplotlib; one colour per method everywhere), :mod:`.grids` the image grids of the
distilled sets (contrast stretched per set), :mod:`.boards` the index's tables (the summary of
methods x comparable groups, a board per group), :mod:`.pages` the HTML pages, and :mod:`.build`
puts it all in a folder that opens from disk: no server, no network, every asset local (papers
and code are plain links out), the same bytes for the same records.
"""
