"""The commands that run the whole pipeline (prepare, train, export, then bench or the card), each a fixed list of
the stage commands: ``floraedge demo`` (every stage on the built-in synthetic release, offline) and ``floraedge
release`` (the released model's folder, from the Oxford-102 release or your own photos). They live under
benchmarks/ because it is the one stage folder that may import every other stage."""
