"""The published leaderboard: a static site built from run records (``ddbench publish``).

:mod:`.rows` turns records into leaderboard rows (the views' grouping rules), :mod:`.exports`
renders them as Markdown and LaTeX, :mod:`.plots` draws the figures (matplotlib), :mod:`.grids`
the image grids of the distilled sets, :mod:`.pages` the HTML, and :mod:`.build` puts it all in
a folder that opens from disk: no server, no network, every asset local, the same bytes for the
same records.
"""
