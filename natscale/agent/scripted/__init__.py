"""The bundled example task's generator (``examples/generate.py``): seeded arithmetic problems
(``problems``), a scripted teacher that solves them with the real tools (``teacher``), the NAT
release files (``dataset``) and the tiny tokenizer / model configs (``assets``)."""
