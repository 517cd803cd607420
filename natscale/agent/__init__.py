"""The agent protocol: ReAct syntax and parsing, tools and their registry, answer scoring.

A leaf package: data preparation, conversion and evaluation import it; it imports none of them.
"""
