"""marketcast's benchmarks: its performance scenarios as commands.

``python -m bench all`` runs every scenario, each in a
fresh process of its own, and prints a Markdown report: the machine's conditions, then
each scenario's figures beside a floor measured in the same run, the ratios, and the
issue targets met or missed.
``--quick`` runs everything in a few minutes with small sizes. See
``docs/performance.md`` for how each number is measured.
"""
